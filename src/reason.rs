//! Why connections and sessions end or are refused: one list with stable codes, used for
//! logs, the per-reason counters (metrics, tests) and QUIC application error codes.
//! Codes never change meaning; new reasons get new codes.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::hub::HubError;
use crate::rtmp::chunk::ChunkError;
use crate::rtmp::message::MessageError;
use crate::rtmp::session::SessionError;
use crate::transport::admission::Refusal;

macro_rules! reasons {
    ($($(#[doc = $doc:literal])* $name:ident = $code:literal, $text:literal;)*) => {
        /// A close or refusal reason.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum Reason {
            $($(#[doc = $doc])* $name = $code,)*
        }

        impl Reason {
            /// Every reason, in code order.
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)*];

            /// The reason a stable code stands for.
            pub fn from_code(code: u64) -> Option<Reason> {
                match code {
                    $($code => Some(Reason::$name),)*
                    _ => None,
                }
            }

            /// A short name for logs and metric labels (`snake_case`).
            pub fn name(self) -> &'static str {
                match self {
                    $(Reason::$name => $text,)*
                }
            }
        }
    };
}

reasons! {
    /// An orderly end: the peer closed, the stream ended, shutdown drained it.
    Normal = 0x100, "normal";
    /// The peer went away (reset, broken pipe, lost connection).
    PeerGone = 0x101, "peer_gone";
    /// Nothing came before the handshake deadline (before any RTMP byte or TLS).
    HandshakeTimeout = 0x110, "handshake_timeout";
    /// A peer that had to talk stayed silent past its deadline (handshake, connect or
    /// idle timeout).
    PeerSilent = 0x111, "peer_silent";
    /// A player's socket took no data for the write timeout.
    WriteTimeout = 0x112, "write_timeout";
    /// A session that neither published nor played within `role_timeout_ms`.
    NoRole = 0x113, "no_role";
    /// A malformed RTMP handshake.
    BadHandshake = 0x120, "bad_handshake";
    /// The TLS handshake failed (RTMPS).
    TlsFailed = 0x121, "tls_failed";
    /// A chunk size outside the accepted range.
    ChunkSize = 0x130, "chunk_size";
    /// A message longer than the limit.
    MessageTooLarge = 0x131, "message_too_large";
    /// Partial messages beyond the pending limit.
    TooMuchPending = 0x132, "too_much_pending";
    /// More chunk streams than allowed.
    TooManyChunkStreams = 0x133, "too_many_chunk_streams";
    /// Chunks out of order (a continuation without a start, a start inside a message).
    ChunkOrder = 0x134, "chunk_order";
    /// A control message shorter than its layout.
    BadMessage = 0x140, "bad_message";
    /// Malformed AMF0 in a command.
    BadAmf0 = 0x141, "bad_amf0";
    /// A command over the size limit.
    CommandTooLarge = 0x142, "command_too_large";
    /// A command without a name or transaction id.
    BadCommand = 0x143, "bad_command";
    /// A well-formed command at the wrong time (publish before connect...).
    ProtocolViolation = 0x150, "protocol_violation";
    /// A publish to a session ID that already has a publisher.
    PublishTaken = 0x160, "publish_taken";
    /// A publish over `max_publishers`.
    TooManyPublishers = 0x161, "too_many_publishers";
    /// The gate refused a publish or play without a more specific reason (or did not
    /// decide within the handshake timeout).
    Refused = 0x162, "refused";
    /// A play whose stream was not published within `play_wait_ms`.
    StreamNotFound = 0x163, "stream_not_found";
    /// A publisher silent past `publisher_takeover_ms` was replaced by a new publisher on
    /// its session ID (its players stay with the stream).
    PublisherReplaced = 0x164, "publisher_replaced";
    /// A connection over `max_connections`.
    ConnectionLimit = 0x170, "connection_limit";
    /// A connection over `max_connections_per_ip`.
    AddressLimit = 0x171, "address_limit";
    /// A publish over `max_publishers_per_ip` from one address.
    AddressPublisherLimit = 0x172, "address_publisher_limit";
    /// A connection or publish refused while the process was over `max_memory`.
    MemoryBudget = 0x173, "memory_budget";
    /// Bytes on a RoQR stream that are not frames (or partial frames over the limit).
    FrameEncoding = 0x180, "frame_encoding";
    /// A RoQR stream of a flow nobody bound, stopped past the bound.
    UnknownFlow = 0x181, "unknown_flow";
    /// A QUIC connection that opened no RTMP session (tunnel) or command stream (RoQR)
    /// within the handshake timeout.
    NoSession = 0x182, "no_session";
    /// A QUIC connection with an ALPN we do not serve.
    UnsupportedAlpn = 0x183, "unsupported_alpn";
    /// The relay is shutting down.
    Shutdown = 0x190, "shutdown";
    /// Another I/O failure.
    Io = 0x191, "io";
    /// An operator ended the session through the control API.
    EndedByApi = 0x192, "ended_by_api";
    /// A publish or play that needs a token came without one.
    TokenMissing = 0x1a0, "token_missing";
    /// A token that is malformed or signed with another secret.
    TokenInvalid = 0x1a1, "token_invalid";
    /// A token past its expiry.
    TokenExpired = 0x1a2, "token_expired";
    /// A token for the other role (a play token used to publish...).
    TokenWrongRole = 0x1a3, "token_wrong_role";
    /// A token for other session IDs.
    TokenWrongStream = 0x1a4, "token_wrong_stream";
    /// A token whose `nbf` (not before) is still ahead, beyond the clock leeway.
    TokenNotYetValid = 0x1a5, "token_not_yet_valid";
    /// The publish or play hook answered with a status other than 2xx.
    HookRefused = 0x1a8, "hook_refused";
    /// The publish or play hook did not answer within `hooks.timeout_ms`.
    HookTimeout = 0x1a9, "hook_timeout";
    /// The publish or play hook could not be reached.
    HookFailed = 0x1aa, "hook_failed";
    /// More publish and play decisions were waiting for a hook than `[hooks]
    /// max_in_flight`: refused without asking it.
    HookOverloaded = 0x1ab, "hook_overloaded";
    /// A relay target that is this relay itself (a forward to itself would loop).
    RelayLoop = 0x1b0, "relay_loop";
    /// A relayed publish (or a forward) that would pass more relays than `max_hops`.
    HopLimit = 0x1b1, "hop_limit";
    /// A forward target that could not be reached (refused connection, no answer,
    /// name not resolved, TLS/QUIC failure).
    TargetUnreachable = 0x1b2, "target_unreachable";
    /// A forward target that answered but refused the publish (status code in the log).
    TargetRefused = 0x1b3, "target_refused";
    /// A forward target that closed or lost the connection while we published.
    TargetLost = 0x1b4, "target_lost";
    /// A forward target that took no data for `write_timeout_ms`.
    TargetStalled = 0x1b5, "target_stalled";
    /// The cluster registry could not be reached (publish and play go on locally).
    RegistryUnavailable = 0x1c0, "registry_unavailable";
    /// A publish refused because another node holds the session ID's lease.
    PublishedElsewhere = 0x1c1, "published_elsewhere";
    /// A publisher's lease was taken by another node while it published.
    LeaseLost = 0x1c2, "lease_lost";
    /// A pull could not start on an origin (down, refused, no such stream).
    UpstreamFailed = 0x1c3, "upstream_failed";
    /// A pull that was playing lost its origin (it pulls again).
    UpstreamLost = 0x1c4, "upstream_lost";
    /// A pull not started: `max_pulls` were running.
    PullLimit = 0x1c5, "pull_limit";
    /// An HTTP request the relay cannot read: malformed, or its head over the size or
    /// header-count caps (answered 400 or 431).
    BadHttpRequest = 0x1d0, "bad_http_request";
    /// An HTTP request for a path the relay does not serve (answered 404), or with a
    /// method it does not serve there (405).
    HttpNotFound = 0x1d1, "http_not_found";
}

impl Reason {
    /// The stable code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The code as a QUIC application error code (the tunnel mapping's closes; RoQR
    /// connections close with the draft's own codes).
    pub fn to_quic(self) -> quinn::VarInt {
        quinn::VarInt::from_u32(u32::from(self.code()))
    }

    /// The reason behind a QUIC application error code, if it is one of ours.
    pub fn from_quic(code: quinn::VarInt) -> Option<Reason> {
        Self::from_code(code.into_inner())
    }

    /// Whether this reason refuses something (a connection, a publish, a play) rather
    /// than ending what was running: `/metrics` counts the two apart.
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            Reason::PublishTaken
                | Reason::TooManyPublishers
                | Reason::Refused
                | Reason::StreamNotFound
                | Reason::ConnectionLimit
                | Reason::AddressLimit
                | Reason::AddressPublisherLimit
                | Reason::MemoryBudget
                | Reason::UnsupportedAlpn
                | Reason::BadHttpRequest
                | Reason::HttpNotFound
        )
    }

    /// Why a session machine gave up.
    pub fn of_session(e: &SessionError) -> Reason {
        match e {
            SessionError::Handshake(_) => Reason::BadHandshake,
            SessionError::Chunk(c) => match c {
                ChunkError::BadChunkSize(..) => Reason::ChunkSize,
                ChunkError::MessageTooLarge(..) => Reason::MessageTooLarge,
                ChunkError::TooMuchPending(_) => Reason::TooMuchPending,
                ChunkError::TooManyChunkStreams(_) => Reason::TooManyChunkStreams,
                ChunkError::NoPreviousHeader(_) | ChunkError::Interrupted(_) => Reason::ChunkOrder,
            },
            SessionError::Message(m) => match m {
                MessageError::Short(_) => Reason::BadMessage,
                MessageError::Amf0(_) => Reason::BadAmf0,
                MessageError::CommandTooLarge(_) => Reason::CommandTooLarge,
                MessageError::BadCommand => Reason::BadCommand,
            },
            SessionError::Protocol(_) => Reason::ProtocolViolation,
            SessionError::Refused { .. } => Reason::Refused,
        }
    }

    /// Why admission refused a connection.
    pub fn of_refusal(r: Refusal) -> Reason {
        match r {
            Refusal::Total(_) => Reason::ConnectionLimit,
            Refusal::PerIp(_) => Reason::AddressLimit,
            Refusal::PublishersPerIp(_) => Reason::AddressPublisherLimit,
            Refusal::Memory(_) => Reason::MemoryBudget,
        }
    }

    /// Why the hub refused a publish.
    pub fn of_hub(e: &HubError) -> Reason {
        match e {
            HubError::AlreadyPublishing(_) => Reason::PublishTaken,
            HubError::TooManyPublishers(_) => Reason::TooManyPublishers,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How often each reason happened. Lock-free: counting never contends with anything.
#[derive(Debug)]
pub struct Counters {
    counts: Vec<AtomicU64>,
}

impl Default for Counters {
    fn default() -> Self {
        Self { counts: Reason::ALL.iter().map(|_| AtomicU64::new(0)).collect() }
    }
}

impl Counters {
    fn index(r: Reason) -> usize {
        Reason::ALL.iter().position(|x| *x == r).unwrap_or(0)
    }

    /// Counts one occurrence.
    pub fn count(&self, r: Reason) {
        if let Some(c) = self.counts.get(Self::index(r)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Occurrences of `r` so far.
    pub fn get(&self, r: Reason) -> u64 {
        self.counts.get(Self::index(r)).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Every reason with its count.
    pub fn snapshot(&self) -> Vec<(Reason, u64)> {
        Reason::ALL.iter().map(|r| (*r, self.get(*r))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_stable_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.code()), "duplicate code {:#x}", r.code());
            assert_eq!(Reason::from_code(u64::from(r.code())), Some(*r));
            assert_eq!(Reason::from_quic(r.to_quic()), Some(*r));
            assert!(r.name().chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
        }
        // Pinned: these codes are on the wire and in dashboards.
        assert_eq!(Reason::Normal.code(), 0x100);
        assert_eq!(Reason::PublishTaken.code(), 0x160);
        assert_eq!(Reason::TokenMissing.code(), 0x1a0);
        assert_eq!(Reason::TokenNotYetValid.code(), 0x1a5);
        assert_eq!(Reason::HookRefused.code(), 0x1a8);
        assert_eq!(Reason::from_code(0x3), None);
    }

    #[test]
    fn counters_count_per_reason() {
        let c = Counters::default();
        c.count(Reason::BadAmf0);
        c.count(Reason::BadAmf0);
        c.count(Reason::Io);
        assert_eq!((c.get(Reason::BadAmf0), c.get(Reason::Io), c.get(Reason::Normal)), (2, 1, 0));
        assert_eq!(c.snapshot().iter().map(|(_, n)| n).sum::<u64>(), 3);
    }
}
