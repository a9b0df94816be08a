//! QUIC building blocks: transport parameters (congestion control, windows, MTU,
//! timeouts) and the server and client endpoints (one UDP socket for every connection;
//! ALPN `roqr` and `rtmp`). The accept loop and ALPN dispatch live in `server::quic`.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use quinn::congestion::{BbrConfig, ControllerFactory, CubicConfig, NewRenoConfig};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, EndpointConfig, IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt};

use super::redundancy::{Redundancy, RedundancyMode};
use super::tls::{self, Identity, Trust};

/// Unidirectional streams a peer may have open at once (RoQR media).
const MAX_UNI_STREAMS: u32 = 32;
/// quinn's default `max_udp_payload_size`: the largest UDP payload of a 1500-byte
/// Ethernet frame over IPv4. Never announce less.
const ETHERNET_UDP_PAYLOAD: u16 = 1472;
/// The default upper bound of MTU discovery: fits a 1500-byte Ethernet path under IPv6.
/// Raising it (`quic_max_mtu`, e.g. 9000 on jumbo-frame links or loopback) sends a video
/// frame in far fewer packets: on loopback, 9000 cost about 19 % less server CPU per
/// delivered Gbit with half the p99 latency, but players joining (a GOP-cache burst)
/// waited over a second for their first frame at p90 and RoQR players skipped frames
/// (bench/RESULTS.md), so it is not the default until that is understood.
pub const DEFAULT_MAX_MTU: u16 = 1452;

/// Why the QUIC side could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// TLS material was refused.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// rustls config unusable for QUIC (e.g. no TLS 1.3).
    #[error("QUIC TLS config: {0}")]
    Crypto(String),
    /// A timeout value out of QUIC's range.
    #[error("QUIC idle timeout out of range")]
    IdleTimeout,
    /// A maximum MTU out of QUIC's range.
    #[error("QUIC max MTU out of range (1200..=65527)")]
    MaxMtu,
    /// Socket setup failed (the message includes the cause, so it is no `source()`).
    #[error("QUIC endpoint: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for QuicError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// A QUIC congestion controller (quinn's implementations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    /// Model-based (bandwidth and RTT): keeps sending at the path's rate through random
    /// loss. The default.
    Bbr,
    /// Loss-based, quinn's own default.
    Cubic,
    /// Loss-based, the RFC 9002 reference.
    Newreno,
}

impl std::fmt::Display for Congestion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Bbr => "bbr",
            Self::Cubic => "cubic",
            Self::Newreno => "newreno",
        })
    }
}

/// What a QUIC endpoint is configured with, on either side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuicSettings {
    /// Congestion controller.
    pub congestion: Congestion,
    /// RTT assumed before the first sample.
    pub initial_rtt: Duration,
    /// Largest UDP payload MTU discovery probes for, and the largest this endpoint
    /// accepts (announced to peers as `max_udp_payload_size`).
    pub max_mtu: u16,
    /// Idle timeout.
    pub idle_timeout: Duration,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// Bidirectional streams the peer may open at once.
    pub max_bidi_streams: u32,
    /// Redundant copies of datagrams on lossy paths.
    pub redundancy: RedundancyMode,
}

impl Default for QuicSettings {
    fn default() -> Self {
        Self {
            congestion: Congestion::Bbr,
            initial_rtt: Duration::from_millis(100),
            max_mtu: DEFAULT_MAX_MTU,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            max_bidi_streams: 16,
            redundancy: RedundancyMode::Auto,
        }
    }
}

/// Transport parameters, set explicitly rather than left to library defaults: the idle
/// timeout and keep-alive decide how fast a dead peer is noticed, and the stream
/// windows how much a single RTMP session can have in flight.
pub fn transport_config(q: &QuicSettings) -> Result<TransportConfig, QuicError> {
    let mut t = TransportConfig::default();
    let idle = IdleTimeout::try_from(q.idle_timeout).map_err(|_| QuicError::IdleTimeout)?;
    t.max_idle_timeout(Some(idle));
    t.keep_alive_interval(Some(q.keep_alive));
    t.max_concurrent_bidi_streams(VarInt::from_u32(q.max_bidi_streams));
    // RoQR media: an audio stream and a stream per GOP, a few of them finishing at once.
    t.max_concurrent_uni_streams(VarInt::from_u32(MAX_UNI_STREAMS));
    // A few seconds of a high-bitrate stream per session: enough for loss recovery on
    // long paths without letting one session buffer unbounded data.
    t.stream_receive_window(VarInt::from_u32(4 * 1024 * 1024));
    t.receive_window(VarInt::from_u32(16 * 1024 * 1024));
    t.send_window(16 * 1024 * 1024);
    t.congestion_controller_factory(congestion_factory(q.congestion));
    t.initial_rtt(q.initial_rtt);
    // Start at the safe 1200 and let discovery find the path's limit: a larger initial
    // MTU is lost as a black hole on tunnels and VPNs before discovery can lower it.
    let mut mtu = MtuDiscoveryConfig::default();
    mtu.upper_bound(q.max_mtu);
    t.mtu_discovery_config(Some(mtu));
    // The peer's default ack delay (25 ms) stays: asking for 5 ms (ACK frequency) gained
    // nothing measurable in the impairment lab and costs more ACKs to process per player.
    // Pacing is always on in quinn; with BBR it sends at the estimated bottleneck rate
    // instead of in window-sized bursts that overflow shallow router queues.
    Ok(t)
}

/// Endpoint parameters: the largest UDP payload this endpoint accepts, which it announces
/// to its peers (`max_udp_payload_size`) and which caps what their MTU discovery probes
/// for. quinn's default (1472) would keep every peer at Ethernet size even where the path
/// carries far more (loopback, jumbo frames), whatever `max_mtu` says.
pub fn endpoint_config(q: &QuicSettings) -> Result<EndpointConfig, QuicError> {
    let mut e = EndpointConfig::default();
    e.max_udp_payload_size(q.max_mtu.max(ETHERNET_UDP_PAYLOAD)).map_err(|_| QuicError::MaxMtu)?;
    Ok(e)
}

/// The congestion controller for `choice`.
pub fn congestion_factory(choice: Congestion) -> Arc<dyn ControllerFactory + Send + Sync> {
    match choice {
        Congestion::Bbr => Arc::new(BbrConfig::default()),
        Congestion::Cubic => Arc::new(CubicConfig::default()),
        Congestion::Newreno => Arc::new(NewRenoConfig::default()),
    }
}

/// The server endpoint on an already bound UDP socket (the same port as TCP), and its
/// redundancy, which the accept loop has watch every connection.
pub fn server_endpoint(
    socket: UdpSocket,
    id: &Identity,
    q: &QuicSettings,
) -> Result<(Endpoint, Redundancy), QuicError> {
    server_endpoint_with(socket, tls::server_config(id, &tls::SERVER_ALPN)?, q)
}

/// As [`server_endpoint`], with a TLS configuration made by the caller (a certificate
/// picked per handshake: [`tls::AlpnCertResolver`]).
pub fn server_endpoint_with(
    socket: UdpSocket,
    tls: rustls::ServerConfig,
    q: &QuicSettings,
) -> Result<(Endpoint, Redundancy), QuicError> {
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| QuicError::Crypto(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport_config(q)?));
    socket.set_nonblocking(true)?;
    let redundancy = Redundancy::new(q.redundancy);
    let endpoint = Endpoint::new_with_abstract_socket(
        endpoint_config(q)?,
        Some(server),
        redundancy.wrap(socket)?,
        Arc::new(quinn::TokioRuntime),
    )?;
    Ok((endpoint, redundancy))
}

/// A client's QUIC endpoint and the redundancy of its socket.
#[derive(Debug)]
pub struct ClientEndpoint {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Its socket's redundant sending; a rebind keeps it.
    pub redundancy: Redundancy,
}

impl ClientEndpoint {
    /// Connects to `addr` (`host` for TLS) and watches the connection for loss.
    pub async fn connect(&self, addr: SocketAddr, host: &str) -> Result<quinn::Connection, ConnectFailed> {
        let conn = self.endpoint.connect(addr, host)?.await?;
        self.redundancy.watch(&conn);
        Ok(conn)
    }

    /// Moves the endpoint to a fresh ephemeral socket of the same address family (a
    /// network change: Wi-Fi to cellular, a NAT rebinding); QUIC migrates its
    /// connections. Returns the new local address.
    pub fn rebind(&self) -> std::io::Result<SocketAddr> {
        let socket = bind_udp(any_port_like(self.endpoint.local_addr()?))?;
        self.endpoint.rebind_abstract(self.redundancy.wrap(socket)?)?;
        self.endpoint.local_addr()
    }
}

/// The unspecified address of `addr`'s family, port 0: where a client socket binds.
fn any_port_like(addr: SocketAddr) -> SocketAddr {
    if addr.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    }
}

/// Why [`ClientEndpoint::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailed {
    /// The connection could not be started (bad server name, endpoint closing...).
    #[error(transparent)]
    Start(#[from] quinn::ConnectError),
    /// The handshake failed or the connection was lost during it.
    #[error(transparent)]
    Handshake(#[from] quinn::ConnectionError),
}

/// Longest silence from the server a client tolerates, and its keep-alive interval.
/// A publisher or player always expects traffic (media, acknowledgements, keep-alives), so
/// a server that sends nothing for this long is gone (crashed, unplugged): the client
/// must fail within seconds, as a TCP client does on a reset, not after the server's
/// 30 s. QUIC uses the smaller of both sides' idle timeouts, so the server drops a dead
/// client equally fast; the client's keep-alives keep a healthy idle session (a player
/// waiting for its publisher) open.
const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
const CLIENT_KEEP_ALIVE: Duration = Duration::from_secs(1);

/// [`transport_config`] for a client: idle timeout and keep-alive at most
/// [`CLIENT_IDLE_TIMEOUT`] and [`CLIENT_KEEP_ALIVE`].
pub fn client_transport_config(q: &QuicSettings) -> Result<TransportConfig, QuicError> {
    let mut t = transport_config(q)?;
    let idle = q.idle_timeout.min(CLIENT_IDLE_TIMEOUT);
    let keep_alive = q.keep_alive.min(CLIENT_KEEP_ALIVE).min(idle / 2);
    t.max_idle_timeout(Some(IdleTimeout::try_from(idle).map_err(|_| QuicError::IdleTimeout)?));
    t.keep_alive_interval(Some(keep_alive));
    Ok(t)
}

/// Send and receive buffer asked for on every QUIC socket, server and client (the kernel
/// caps it at `net.core.{r,w}mem_max`; quic-go asks for 7 MiB likewise). With the default
/// (~208 KiB) a socket drops datagrams whenever its thread is late during a burst (a
/// keyframe to every player, a GOP-cache burst to a joining player, an edge pulling many
/// streams), and QUIC reads the drops as loss: congestion control backs off, and the
/// redundancy policy may even start sending copies. The buffer is a limit, not an
/// allocation: it costs memory only while datagrams wait in it.
pub const UDP_BUFFER: usize = 8 * 1024 * 1024;

/// A non-blocking UDP socket for QUIC bound to `addr` (dual-stack for `[::]` where the OS
/// allows, as `TcpListener::bind` is), its buffers asked at [`UDP_BUFFER`]: the one way
/// every QUIC socket of the relay and its clients is made.
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    // Best effort (the kernel caps the sizes silently): a smaller buffer still works, it
    // only drops more under load.
    if let Err(e) =
        socket.set_recv_buffer_size(UDP_BUFFER).and_then(|()| socket.set_send_buffer_size(UDP_BUFFER))
    {
        tracing::warn!(error = %e, "cannot enlarge a QUIC socket's buffers");
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A client endpoint with the given trust, bound to an ephemeral port of `peer`'s family,
/// its socket buffers at [`UDP_BUFFER`].
pub fn client_endpoint(
    peer: SocketAddr,
    trust: &Trust,
    q: &QuicSettings,
    alpn: &[u8],
) -> Result<ClientEndpoint, QuicError> {
    let tls = tls::client_config(trust, &[alpn])?;
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| QuicError::Crypto(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(client_transport_config(q)?));
    let socket = bind_udp(any_port_like(peer))?;
    let redundancy = Redundancy::new(q.redundancy);
    let mut endpoint = Endpoint::new_with_abstract_socket(
        endpoint_config(q)?,
        None,
        redundancy.wrap(socket)?,
        Arc::new(quinn::TokioRuntime),
    )?;
    endpoint.set_default_client_config(client);
    Ok(ClientEndpoint { endpoint, redundancy })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::tls::ALPN_RTMP;

    /// Every QUIC socket asks for [`UDP_BUFFER`]: with the kernel's default a player or an
    /// edge drops bursts, and QUIC takes the drops for loss (bench/RESULTS.md, "QUIC after
    /// two fixes"). Linux reports twice what it granted, capped at `net.core.rmem_max`.
    #[test]
    fn quic_sockets_get_the_large_buffers() {
        let max =
            std::fs::read_to_string("/proc/sys/net/core/rmem_max").ok().and_then(|s| s.trim().parse().ok());
        let socket = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let got = socket2::SockRef::from(&socket).recv_buffer_size().unwrap();
        let want = max.map_or(UDP_BUFFER, |m: usize| m.min(UDP_BUFFER));
        assert!(got >= want, "receive buffer {got} bytes, asked {UDP_BUFFER} (rmem_max {max:?})");
    }

    /// Over loopback, MTU discovery climbs to a raised `max_mtu` (which needs both ends
    /// to announce it as their `max_udp_payload_size`), and the sender hands the kernel
    /// several datagrams per system call (UDP GSO): the two settings that make bulk media
    /// over QUIC cheap, asserted from quinn's own counters.
    #[tokio::test]
    async fn loopback_reaches_the_mtu_bound_and_batches_datagrams() {
        let dir = tempfile::tempdir().unwrap();
        let (id, _) = tls::dev_identity(dir.path()).unwrap();
        let q = QuicSettings { max_mtu: 9000, ..QuicSettings::default() };
        let (server, _) = server_endpoint(UdpSocket::bind("127.0.0.1:0").unwrap(), &id, &q).unwrap();
        let addr = server.local_addr().unwrap();
        let trust = Trust::CaFile(dir.path().join(tls::DEV_CA_FILE));
        let client = client_endpoint(addr, &trust, &q, ALPN_RTMP).unwrap();

        let test = async {
            let connecting = client.connect(addr, "localhost");
            let accepting = async { server.accept().await.unwrap().await };
            let (server_conn, conn) = tokio::join!(accepting, connecting);
            let (server_conn, conn) = (server_conn.unwrap(), conn.unwrap());
            let (mut up, mut down) = conn.open_bi().await.unwrap();
            up.write_all(b"go").await.unwrap();
            let (mut send, _recv) = server_conn.accept_bi().await.unwrap();
            let reading = tokio::spawn(async move { down.read_to_end(usize::MAX).await.map(|v| v.len()) });
            // Discovery runs while data flows: write until the path MTU stops climbing
            // short of the bound (quinn stops within 20 bytes of it).
            let chunk = bytes::Bytes::from(vec![7u8; 64 * 1024]);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while server_conn.stats().path.current_mtu + 20 < q.max_mtu {
                let mtu = server_conn.stats().path.current_mtu;
                assert!(std::time::Instant::now() < deadline, "path MTU stuck at {mtu}, bound {}", q.max_mtu);
                send.write_chunk(chunk.clone()).await.unwrap();
                tokio::task::yield_now().await;
            }
            let before = server_conn.stats().udp_tx;
            for _ in 0..16 {
                send.write_chunk(chunk.clone()).await.unwrap();
            }
            send.finish().unwrap();
            let received = reading.await.unwrap().unwrap();
            let after = server_conn.stats().udp_tx;
            (
                server_conn.stats().path.current_mtu,
                received,
                after.datagrams - before.datagrams,
                after.ios - before.ios,
                after.bytes - before.bytes,
            )
        };
        let (mtu, received, datagrams, ios, bytes) =
            tokio::time::timeout(Duration::from_secs(10), test).await.expect("transfer timed out");
        assert!(mtu > 1452 && mtu <= q.max_mtu, "path MTU {mtu}");
        assert!(received > 16 * 64 * 1024);
        // Datagrams near the MTU (1 MiB is about 120 of them; a loaded machine adds
        // retransmissions, of the same size, so their size is what is asserted, not
        // their count); with GSO several go in each system call.
        let mean = bytes / datagrams.max(1);
        assert!(mean > 6000, "{datagrams} datagrams of {mean} bytes on average at MTU {mtu}");
        assert!(ios * 2 <= datagrams, "{datagrams} datagrams in {ios} system calls: no GSO batching");
    }
}
