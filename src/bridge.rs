//! `qrelay bridge`: a local RTMP listener for stock encoders (OBS, ffmpeg) that carries
//! each publish to an upstream relay over RoQR, so an encoder without QUIC gets QUIC's
//! behaviour on the bad part of the path. The encoder's session is answered locally and
//! never waits for the upstream: media goes through a bounded queue to an upstream task,
//! which reconnects with backoff when the upstream fails and resumes with the stream's
//! metadata and sequence headers, then its next keyframe. When the upstream is slower
//! than the stream, media older than the latency budget is dropped (video up to the next
//! keyframe) rather than queued: players stay live, and the bridge logs the path's
//! estimate so that whoever runs the encoder can lower its bitrate.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn, Instrument};

use crate::client::{ClientError, ClientOptions, LiveSkip, RtmpClient};
use crate::config::Config;
use crate::media::frame::{Frame, MediaKind};
use crate::rtmp::session::{ClientMode, ServerEvent, ServerSession};
use crate::url::{StreamUrl, UrlError};

/// Media frames queued towards the upstream; beyond this, frames are dropped up to the
/// next keyframe (the encoder never waits for the upstream).
const UPSTREAM_QUEUE: usize = 1024;
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Time allowed to reach the upstream before the encoder's publish is refused.
const FIRST_CONNECT: Duration = Duration::from_secs(10);
/// Dropped frames are reported at most this often.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// A frame from the encoder and when it arrived: the latency budget counts from then.
type Queued = (Frame, tokio::time::Instant);

/// What the bridge needs.
#[derive(Debug, Clone)]
pub struct BridgeOptions {
    /// Local RTMP address for encoders.
    pub listen: SocketAddr,
    /// `rtmp+quic://host[:port]/app`: each local publish goes to this app with its own key.
    pub upstream: String,
    /// How to reach the upstream (trust, QUIC settings).
    pub client: ClientOptions,
}

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The upstream URL is not usable.
    #[error("bad upstream URL `{}`: {}", crate::url::redact_tokens(.0), .1)]
    Upstream(String, UrlError),
    /// The listener could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
}

/// A bound bridge.
#[derive(Debug)]
pub struct Bridge {
    listener: TcpListener,
    opts: BridgeOptions,
}

impl Bridge {
    /// Checks the upstream URL and binds the local listener.
    pub async fn bind(opts: BridgeOptions) -> Result<Self, BridgeError> {
        StreamUrl::with_key(&opts.upstream, "check")
            .map_err(|e| BridgeError::Upstream(opts.upstream.clone(), e))?;
        let listener =
            TcpListener::bind(opts.listen).await.map_err(|e| BridgeError::Listen(opts.listen, e))?;
        Ok(Self { listener, opts })
    }

    /// The local address encoders publish to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves encoders until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let tasks = TaskTracker::new();
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = self.listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let opts = self.opts.clone();
            let stop = shutdown.clone();
            let span = info_span!("bridge", %peer, session_id = tracing::field::Empty);
            tasks.spawn(
                async move {
                    match serve_encoder(stream, &opts, stop).await {
                        Ok(()) => info!("encoder session ended"),
                        Err(e) => warn!(reason = %e, "encoder session ended with error"),
                    }
                }
                .instrument(span),
            );
        }
        tasks.close();
        tasks.wait().await;
    }
}

/// The stream key sent upstream: the encoder's key with the parameters of the app's query
/// added to its own, so a token the encoder put in the app (OBS's "Server" box
/// `rtmp://bridge/live?token=...`) reaches the upstream too.
fn upstream_key(app: &str, key: &str) -> String {
    match app.split_once('?') {
        Some((_, query)) if !query.is_empty() => {
            let sep = if key.contains('?') { '&' } else { '?' };
            format!("{key}{sep}{query}")
        }
        _ => key.to_owned(),
    }
}

#[derive(Debug, thiserror::Error)]
enum EncoderError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Session(#[from] crate::rtmp::session::SessionError),
}

/// One encoder connection: the RTMP session answered locally, its publish carried
/// upstream by [`upstream_task`].
async fn serve_encoder(
    mut stream: TcpStream,
    opts: &BridgeOptions,
    shutdown: CancellationToken,
) -> Result<(), EncoderError> {
    stream.set_nodelay(true)?;
    let config = Config::default();
    let mut session = ServerSession::new(config.session());
    let mut buf = vec![0u8; 64 * 1024];
    let mut upstream: Option<mpsc::Sender<Queued>> = None;
    let mut dropping = false;
    let handshake = tokio::time::Instant::now() + Duration::from_millis(config.handshake_timeout_ms);
    loop {
        if let Some(out) = session.take_output() {
            stream.write_all(&out).await?;
        }
        let idle = if session.is_connected() {
            tokio::time::Instant::now() + Duration::from_millis(config.idle_timeout_ms)
        } else {
            handshake
        };
        let n = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = tokio::time::timeout_at(idle, stream.read(&mut buf)) => match r {
                Ok(r) => r?,
                Err(_) => return Err(EncoderError::Io(std::io::ErrorKind::TimedOut.into())),
            },
        };
        if n == 0 {
            return Ok(());
        }
        session.handle_input(&buf[..n])?;
        while let Some(event) = session.poll_event() {
            match event {
                ServerEvent::PublishRequest { app, key, session_id, .. } => {
                    tracing::Span::current().record("session_id", session_id.as_str());
                    match start_upstream(opts, &upstream_key(&app, &key), shutdown.clone()).await {
                        Ok(tx) => {
                            info!("publish carried upstream");
                            session.core().accept_publish();
                            upstream = Some(tx);
                        }
                        Err(e) => {
                            warn!(reason = %e, "upstream refused or unreachable; publish refused");
                            session.core().reject_publish("NetStream.Publish.BadName", &e);
                        }
                    }
                }
                ServerEvent::Media(frame) => {
                    let Some(tx) = &upstream else { continue };
                    // Bounded: when the upstream falls behind, drop up to the next keyframe
                    // (configuration always goes) instead of making the encoder wait.
                    if dropping && frame.is_keyframe() {
                        dropping = false;
                    }
                    let essential = frame.is_sequence_header() || frame.kind() == MediaKind::Data;
                    if (dropping && !essential) || tx.try_send((frame, tokio::time::Instant::now())).is_err()
                    {
                        dropping = true;
                    }
                }
                ServerEvent::Unpublish => upstream = None,
                ServerEvent::PlayRequest { .. } => {
                    session.core().reject_play("NetStream.Play.Failed", "the bridge only carries publishes");
                }
                ServerEvent::StopPlay => {}
            }
        }
    }
}

/// Connects upstream once (its answer decides the local publish), then hands the
/// connection to a task that carries the media and reconnects as needed. The error is
/// the reason the encoder is told.
async fn start_upstream(
    opts: &BridgeOptions,
    key: &str,
    shutdown: CancellationToken,
) -> Result<mpsc::Sender<Queued>, String> {
    let url = StreamUrl::with_key(&opts.upstream, key).map_err(|e| e.to_string())?;
    let connect = RtmpClient::connect(&url, ClientMode::Publish, &opts.client);
    let client = match tokio::time::timeout(FIRST_CONNECT, connect).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => {
            return Err(
                ClientError::Timeout { stage: "reaching the upstream", after: FIRST_CONNECT }.to_string()
            )
        }
    };
    let (tx, rx) = mpsc::channel(UPSTREAM_QUEUE);
    tokio::spawn(upstream_task(client, url, opts.client.clone(), rx, shutdown).in_current_span());
    Ok(tx)
}

/// Frames too late for the latency budget, dropped, and reported with the path's
/// estimate (an encoder's operator lowers the bitrate from it).
#[derive(Debug, Default)]
struct LateReport {
    skip: LiveSkip,
    since_report: u64,
    reported_at: Option<tokio::time::Instant>,
}

impl LateReport {
    fn dropped(&mut self, upstream: &RtmpClient) {
        self.since_report += 1;
        let now = tokio::time::Instant::now();
        if self.reported_at.is_some_and(|t| now.duration_since(t) < REPORT_EVERY) {
            return;
        }
        self.reported_at = Some(now);
        let frames = std::mem::take(&mut self.since_report);
        match upstream.path_estimate() {
            Some(p) => warn!(
                frames,
                allowed_kbps = p.allowed_bps / 1000,
                rtt_ms = p.rtt.as_millis() as u64,
                gops_cut = p.gops_cut,
                "upstream slower than the stream: late frames dropped; lower the encoder's bitrate"
            ),
            None => warn!(
                frames,
                "upstream slower than the stream: late frames dropped; lower the encoder's bitrate"
            ),
        }
    }
}

/// What a reconnected upstream needs before media: metadata and sequence headers.
#[derive(Default)]
struct Resume {
    metadata: Option<Frame>,
    video_config: Option<Frame>,
    audio_config: Option<Frame>,
}

impl Resume {
    fn note(&mut self, f: &Frame) {
        match f.kind() {
            MediaKind::Data => self.metadata = Some(f.clone()),
            MediaKind::Video if f.is_sequence_header() => self.video_config = Some(f.clone()),
            MediaKind::Audio if f.is_sequence_header() => self.audio_config = Some(f.clone()),
            _ => {}
        }
    }

    fn frames(&self) -> impl Iterator<Item = &Frame> {
        [&self.metadata, &self.video_config, &self.audio_config].into_iter().flatten()
    }
}

async fn upstream_task(
    client: RtmpClient,
    url: StreamUrl,
    opts: ClientOptions,
    mut rx: mpsc::Receiver<Queued>,
    shutdown: CancellationToken,
) {
    let mut client = Some(client);
    let mut resume = Resume::default();
    let mut late = LateReport::default();
    // After a reconnect, media resumes at a keyframe (what came between is gone).
    let mut need_keyframe = false;
    let mut backoff = BACKOFF_MIN;
    loop {
        let Some(c) = client.as_mut() else {
            // Reconnect, with backoff, while the encoder keeps publishing (its frames are
            // noted for the resume and otherwise dropped meanwhile).
            let wait = tokio::time::sleep(backoff);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = &mut wait => break,
                    f = rx.recv() => match f {
                        Some((f, _)) => resume.note(&f),
                        None => return,
                    },
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            match RtmpClient::connect(&url, ClientMode::Publish, &opts).await {
                Ok(mut c) => {
                    info!("upstream reconnected");
                    let mut ok = true;
                    for f in resume.frames() {
                        ok &= c.send_media(f.kind(), f.timestamp(), f.payload().clone()).await.is_ok();
                    }
                    if ok {
                        client = Some(c);
                        need_keyframe = true;
                        backoff = BACKOFF_MIN;
                    }
                }
                Err(e) => warn!(reason = %e, "upstream reconnect failed"),
            }
            continue;
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            f = rx.recv() => match f {
                Some((f, arrived)) => {
                    resume.note(&f);
                    if need_keyframe && f.kind() == MediaKind::Video && !f.is_sequence_header() {
                        if !f.is_keyframe() {
                            continue;
                        }
                        need_keyframe = false;
                    }
                    if !late.skip.keep(f.kind(), f.payload(), arrived.elapsed(), opts.max_latency) {
                        late.dropped(c);
                        continue;
                    }
                    let payload: Bytes = f.payload().clone();
                    if let Err(e) = c.send_media_due(f.kind(), f.timestamp(), payload, Some(arrived)).await {
                        warn!(reason = %e, "upstream lost; reconnecting");
                        client = None;
                    }
                }
                None => {
                    // The encoder ended its publish: end upstream politely.
                    if let Some(c) = client.take() {
                        let _ = c.finish().await;
                    }
                    return;
                }
            },
            open = c.read_input() => {
                let alive = matches!(open, Ok(true)) && c.flush().await.is_ok();
                if !alive {
                    warn!("upstream closed; reconnecting");
                    client = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_in_the_encoders_app_goes_upstream_with_the_key() {
        assert_eq!(upstream_key("live", "cam1"), "cam1");
        assert_eq!(upstream_key("live?token=t1", "cam1"), "cam1?token=t1");
        assert_eq!(upstream_key("live?token=t1", "cam1?x=1"), "cam1?x=1&token=t1");
        assert_eq!(upstream_key("live?", "cam1"), "cam1");
        let url =
            StreamUrl::with_key("rtmp+quic://relay/up?mode=tunnel", &upstream_key("live?token=t1", "cam1"));
        assert_eq!(url.map(|u| u.key), Ok("cam1?token=t1".to_owned()));
    }
}
