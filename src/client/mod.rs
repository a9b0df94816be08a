//! The outbound side: connects to a stream URL over TCP, TLS or QUIC and drives a
//! [`ClientSession`] to publish or play. `qrelay publish`/`play` are thin loops over
//! [`RtmpClient`]; the bench and relays reuse it.

mod flv_file;

pub use flv_file::{
    play_to_flv, publish_flv, read_flv_tags, ArrivalLog, FileError, PlayOptions, PublishOptions, Transfer,
};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Config;
use crate::media::frame::MediaKind;
use crate::rtmp::session::{ClientEvent, ClientMode, ClientSession, SessionError};
use crate::transport::{quic, tls};
use crate::url::{QuicMapping, StreamUrl, Transport};

/// How to reach a server.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Certificate trust for TLS and QUIC.
    pub trust: tls::Trust,
    /// Session and QUIC transport settings.
    pub config: Config,
    /// Limit on connecting plus the RTMP handshake, connect and publish/play.
    pub connect_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            trust: tls::Trust::WebPki,
            config: Config::default(),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a client failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Name resolution or socket errors.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The host name did not resolve.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// QUIC setup failed.
    #[error(transparent)]
    Quic(#[from] quic::QuicError),
    /// QUIC connection failed.
    #[error("QUIC: {0}")]
    QuicConnect(String),
    /// The RTMP session failed or was refused.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The server closed the connection.
    #[error("server closed the connection")]
    Closed,
    /// The connect/publish/play did not complete in time.
    #[error("timed out connecting")]
    Timeout,
    /// A mapping this build does not speak yet.
    #[error("{0}")]
    Unsupported(&'static str),
}

type Reader = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// An RTMP session over some transport, publishing or playing.
pub struct RtmpClient {
    reader: Reader,
    writer: Writer,
    session: ClientSession,
    buf: Vec<u8>,
    /// Keeps the QUIC endpoint and connection alive as long as the session.
    _quic: Option<(quinn::Endpoint, quinn::Connection)>,
}

impl std::fmt::Debug for RtmpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtmpClient").field("session", &self.session).finish()
    }
}

impl RtmpClient {
    /// Connects and starts publishing or playing (returns once the server said
    /// `NetStream.Publish.Start` / `NetStream.Play.Start`).
    pub async fn connect(
        url: &StreamUrl,
        mode: ClientMode,
        opts: &ClientOptions,
    ) -> Result<Self, ClientError> {
        tokio::time::timeout(opts.connect_timeout, Self::connect_inner(url, mode, opts))
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn connect_inner(
        url: &StreamUrl,
        mode: ClientMode,
        opts: &ClientOptions,
    ) -> Result<Self, ClientError> {
        let addr = resolve(&url.host, url.port).await?;
        let (reader, writer, quic): (Reader, Writer, _) = match url.transport {
            Transport::Tcp => {
                let s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w), None)
            }
            Transport::Tls => {
                let s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                let config = tls::client_config(&opts.trust, &[])?;
                let name = server_name(&url.host)?;
                let s = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, s).await?;
                let (r, w) = tokio::io::split(s);
                (Box::new(r), Box::new(w), None)
            }
            Transport::Quic(QuicMapping::Roqr) => {
                return Err(ClientError::Unsupported(
                    "the RoQR mapping is not implemented yet; use ?mode=tunnel",
                ))
            }
            Transport::Quic(QuicMapping::Tunnel) => {
                let endpoint = quic::client_endpoint(addr, &opts.trust, &opts.config)?;
                let conn = endpoint
                    .connect(addr, &url.host)
                    .map_err(|e| ClientError::QuicConnect(e.to_string()))?
                    .await
                    .map_err(|e| ClientError::QuicConnect(e.to_string()))?;
                let (send, recv) =
                    conn.open_bi().await.map_err(|e| ClientError::QuicConnect(e.to_string()))?;
                (Box::new(recv), Box::new(send), Some((endpoint, conn)))
            }
        };
        Self::start(reader, writer, quic, url, mode, &opts.config).await
    }

    /// Runs the RTMP session over an already open byte stream (e.g. another stream of a
    /// shared QUIC connection).
    pub async fn over_stream(
        reader: Reader,
        writer: Writer,
        url: &StreamUrl,
        mode: ClientMode,
        config: &Config,
    ) -> Result<Self, ClientError> {
        Self::start(reader, writer, None, url, mode, config).await
    }

    async fn start(
        reader: Reader,
        writer: Writer,
        quic: Option<(quinn::Endpoint, quinn::Connection)>,
        url: &StreamUrl,
        mode: ClientMode,
        config: &Config,
    ) -> Result<Self, ClientError> {
        let session = ClientSession::new(config.session(), mode, &url.app, &url.key, &url.tc_url())?;
        let mut client = Self { reader, writer, session, buf: vec![0; 64 * 1024], _quic: quic };
        loop {
            client.flush().await?;
            match client.read_event().await? {
                Some(ClientEvent::PublishStarted | ClientEvent::PlayStarted) => return Ok(client),
                Some(_) => {}
                None => return Err(ClientError::Closed),
            }
        }
    }

    /// Writes whatever the session queued.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if let Some(out) = self.session.take_output() {
            self.writer.write_all(&out).await?;
            self.writer.flush().await?;
        }
        Ok(())
    }

    /// Sends one media message (publish mode).
    pub async fn send_media(
        &mut self,
        kind: MediaKind,
        timestamp: u32,
        payload: Bytes,
    ) -> Result<(), ClientError> {
        self.session.send_media(kind, timestamp, payload);
        self.flush().await
    }

    /// Reads once from the server and processes it, without writing; `false` when the
    /// server closed. Cancel-safe, so it can sit in a `select!` beside a timer; answers
    /// it queued (acks, pongs) go out with the next [`RtmpClient::flush`].
    pub async fn read_input(&mut self) -> Result<bool, ClientError> {
        let n = self.reader.read(&mut self.buf).await?;
        if n == 0 {
            return Ok(false);
        }
        self.session.handle_input(&self.buf[..n])?;
        Ok(true)
    }

    /// Next event already decoded, without reading.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.session.poll_event()
    }

    /// Next event from the server; reads (and flushes answers) as needed. `None` when
    /// the server closed.
    pub async fn read_event(&mut self) -> Result<Option<ClientEvent>, ClientError> {
        loop {
            if let Some(ev) = self.session.poll_event() {
                return Ok(Some(ev));
            }
            self.flush().await?;
            if !self.read_input().await? {
                return Ok(None);
            }
        }
    }

    /// Ends the session politely (FCUnpublish/deleteStream) and closes the write side.
    pub async fn finish(mut self) -> Result<(), ClientError> {
        self.session.finish();
        self.flush().await?;
        self.writer.shutdown().await?;
        if let Some((endpoint, conn)) = self._quic.take() {
            // Give the server the stream's end before the connection goes.
            let _ = tokio::time::timeout(Duration::from_secs(2), self.reader.read(&mut self.buf)).await;
            conn.close(quinn::VarInt::from_u32(0), b"done");
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
        Ok(())
    }
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, ClientError> {
    tokio::net::lookup_host((host, port)).await?.next().ok_or_else(|| ClientError::Resolve(host.to_owned()))
}

fn server_name(host: &str) -> Result<ServerName<'static>, ClientError> {
    ServerName::try_from(host.to_owned()).map_err(|_| ClientError::Resolve(host.to_owned()))
}
