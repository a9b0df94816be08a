//! The JSON the API answers with, built from hub snapshots. Field names are the API's
//! contract (README, "Control API"); tokens and stream-key queries never appear in it.

use std::time::SystemTime;

use serde::Serialize;

use super::rates::Rates;
use super::relays::{ForwardState, PullState};
use super::sessions::{Allocation, SessionUrls};
use crate::hub::{PlayerInfo, StreamInfo};

/// RFC 3339 time in UTC, milliseconds.
fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// `(app, key)` of a session ID: the key is the last segment.
pub(super) fn split_session(session_id: &str) -> (&str, &str) {
    session_id.rsplit_once('/').unwrap_or(("", session_id))
}

/// Codecs a publisher sends.
#[derive(Debug, Serialize)]
pub(super) struct Codecs {
    video: Option<String>,
    audio: Option<String>,
}

/// The publisher of a stream.
#[derive(Debug, Serialize)]
pub(super) struct PublisherJson {
    id: Option<u64>,
    transport: Option<&'static str>,
    address: Option<String>,
    since: String,
    codecs: Codecs,
    /// Bits per second over the last second.
    bitrate_in: u64,
}

/// A stream in `GET /api/streams`; with `players` (and relay state) in the detail.
#[derive(Debug, Serialize)]
pub(super) struct StreamJson {
    session_id: String,
    app: String,
    key: String,
    live: bool,
    publisher: Option<PublisherJson>,
    player_count: usize,
    bitrate_in: u64,
    bitrate_out: u64,
    bytes_in: u64,
    bytes_out: u64,
    frames: u64,
    skipped: u64,
    /// How the players were written: frames written straight to their sockets and the
    /// socket writes that took (fewer when frames were coalesced), summed over players.
    writes: WritesJson,
    gop_cache: GopJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    players: Option<Vec<PlayerJson>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    forward: Option<Vec<ForwardState>>,
    /// Present (as `null` when not pulled) in the detail only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pull: Option<Option<PullState>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allocation: Option<Option<AllocationJson>>,
}

/// A stream's socket writes to its players (`write_coalesce_ms`).
#[derive(Debug, Serialize)]
pub(super) struct WritesJson {
    direct_frames: u64,
    direct_sends: u64,
}

/// The cached GOP.
#[derive(Debug, Serialize)]
pub(super) struct GopJson {
    frames: usize,
    bytes: usize,
}

/// One player.
#[derive(Debug, Serialize)]
pub(super) struct PlayerJson {
    id: Option<u64>,
    transport: Option<&'static str>,
    address: Option<String>,
    since: String,
    /// Playing, or waiting for the publisher.
    state: &'static str,
    bytes_sent: u64,
    bitrate: u64,
    queue_bytes: usize,
    skipped: u64,
}

impl PlayerJson {
    fn new(p: &PlayerInfo, rates: &Rates) -> Self {
        Self {
            id: p.peer.as_ref().map(|x| x.id),
            transport: p.peer.as_ref().map(|x| x.transport),
            address: p.peer.as_ref().and_then(|x| x.addr).map(|a| a.to_string()),
            since: time(p.since),
            state: if p.live { "playing" } else { "waiting" },
            bytes_sent: p.bytes_sent,
            bitrate: p.peer.as_ref().map_or(0, |x| rates.player(x.id)),
            queue_bytes: p.queued_bytes,
            skipped: p.skipped,
        }
    }
}

impl StreamJson {
    /// The summary of `GET /api/streams`.
    pub(super) fn summary(s: &StreamInfo, rates: &Rates) -> Self {
        let (bitrate_in, bitrate_out) = rates.stream(&s.session_id);
        let (app, key) = split_session(&s.session_id);
        let publisher = s.publisher.as_ref().map(|p| PublisherJson {
            id: p.peer.as_ref().map(|x| x.id),
            transport: p.peer.as_ref().map(|x| x.transport),
            address: p.peer.as_ref().and_then(|x| x.addr).map(|a| a.to_string()),
            since: time(p.since),
            codecs: Codecs {
                video: p.video_codec.as_deref().map(str::to_owned),
                audio: p.audio_codec.as_deref().map(str::to_owned),
            },
            bitrate_in,
        });
        Self {
            session_id: s.session_id.clone(),
            app: app.to_owned(),
            key: key.to_owned(),
            live: s.stats.live,
            publisher,
            player_count: s.players.len(),
            bitrate_in,
            bitrate_out,
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
            frames: s.stats.frames,
            skipped: s.stats.skipped,
            writes: WritesJson { direct_frames: s.stats.direct_writes, direct_sends: s.stats.direct_sends },
            gop_cache: GopJson { frames: s.stats.gop_frames, bytes: s.gop_bytes },
            players: None,
            forward: None,
            pull: None,
            allocation: None,
        }
    }

    /// The detail of `GET /api/streams/{app}/{key}`.
    pub(super) fn detail(
        s: &StreamInfo,
        rates: &Rates,
        relay: super::relays::RelayState,
        allocation: Option<&Allocation>,
    ) -> Self {
        let mut json = Self::summary(s, rates);
        json.players = Some(s.players.iter().map(|p| PlayerJson::new(p, rates)).collect());
        json.forward = Some(relay.forward);
        json.pull = Some(relay.pull);
        json.allocation = Some(allocation.map(AllocationJson::new));
        json
    }
}

/// A session allocation.
#[derive(Debug, Serialize)]
pub(super) struct AllocationJson {
    session: String,
    created: String,
    expires: String,
    forward: Vec<String>,
}

impl AllocationJson {
    pub(super) fn new(a: &Allocation) -> Self {
        Self {
            session: a.session_id.clone(),
            created: time(a.created),
            expires: time(a.expires),
            forward: a.forward.iter().map(|f| redact_target(f, &a.session_id)).collect(),
        }
    }

    /// The forward targets as shown (queries left out, foreign stream keys as `***`).
    pub(super) fn forward_urls(self) -> Vec<String> {
        self.forward
    }
}

/// The answer to `POST /api/sessions`.
#[derive(Debug, Serialize)]
pub(super) struct AllocatedJson {
    pub(super) session: String,
    pub(super) expires: String,
    pub(super) ttl_s: u64,
    pub(super) forward: Vec<String>,
    /// Whether the URLs carry tokens.
    pub(super) tokens: bool,
    pub(super) publish: SessionUrls,
    pub(super) play: SessionUrls,
}

impl AllocatedJson {
    pub(super) fn expires(a: &Allocation) -> String {
        time(a.expires)
    }
}

/// A forward target as the API shows it: no query, and its stream key only when it is
/// the session's own (already public as part of the session ID); any other key may be a
/// platform's stream key, a credential, and reads `***`.
fn redact_target(target: &str, session_id: &str) -> String {
    let own_key = session_id.rsplit_once('/').map_or("", |(_, key)| key);
    match crate::url::StreamUrl::parse(target) {
        Ok(url) => url.redacted_target(own_key),
        Err(_) => "***".to_owned(),
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::redact_target;

    #[test]
    fn forward_targets_keep_their_stream_keys_secret() {
        assert_eq!(
            redact_target("rtmp://a.example/live2/sk_live_123?x=1", "live/cam"),
            "rtmp://a.example:1935/live2/***"
        );
        assert_eq!(redact_target("rtmp://a.example/live/cam", "live/cam"), "rtmp://a.example:1935/live/cam");
        assert_eq!(redact_target("not a url", "live/cam"), "***");
    }
}
