//! `GET /metrics`: Prometheus (OpenMetrics text) through `prometheus-client`. Every value
//! is read at scrape time from what the relay counts anyway (hub atomics and stream
//! snapshots, the reason counters, connection gauges, quinn's per-connection statistics,
//! `/proc/self`), so a scrape adds nothing to the media path and the relay keeps no
//! second copy of its counters.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::conns::{ConnKind, Connections};
use super::process;
use crate::hooks::HookStats;
use crate::hub::Hub;
use crate::reason::Counters;

/// What the collector reads on each scrape.
#[derive(Debug)]
pub(super) struct Sources {
    pub(super) hub: Hub,
    pub(super) counters: Arc<Counters>,
    pub(super) conns: Connections,
    pub(super) hooks: Option<Arc<HookStats>>,
    /// Allocated sessions, whose keys are secrets of sorts and stay out of labels.
    pub(super) allocations: super::sessions::Allocations,
}

/// The relay's collector: holds handles, reads on each scrape.
#[derive(Debug)]
struct RelayCollector {
    sources: Sources,
    max_streams: usize,
}

/// The registry `/metrics` encodes.
pub(super) fn registry(sources: Sources, max_streams: usize) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(RelayCollector { sources, max_streams }));
    registry
}

/// A label value as OpenMetrics wants it: `\`, `"` and line feeds escaped.
/// prometheus-client writes values as given, and a session ID is the peer's choice: one
/// `"` would break every scrape while its player waits.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The `stream` label of a session: its ID, escaped; an allocated session's key (a
/// secret of sorts: whoever knows it may publish or play) replaced by a digest of it.
fn stream_label(session_id: &str, allocations: &super::sessions::Allocations) -> String {
    match (allocations.get(session_id), session_id.rsplit_once('/')) {
        (Some(_), Some((app, key))) => {
            let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
            let short: String = digest.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect();
            escape_label(&format!("{app}/allocated-{short}"))
        }
        _ => escape_label(session_id),
    }
}

/// The registry as OpenMetrics text.
pub(super) fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

type Fmt = Result<(), std::fmt::Error>;

/// One unlabelled value.
fn single(enc: &mut DescriptorEncoder, name: &str, help: &str, metric: impl EncodeMetric) -> Fmt {
    metric.encode(enc.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// A family with one label.
fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    kind: MetricType,
    values: impl IntoIterator<Item = (String, M)>,
) -> Fmt {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (value, metric) in values {
        metric.encode(m.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

fn gauge(v: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

impl Collector for RelayCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Fmt {
        let Sources { hub, counters, conns, hooks, allocations } = &self.sources;
        let mut streams = hub.snapshot();
        let live: Vec<_> = streams.iter().filter(|s| s.stats.live).cloned().collect();
        let players: usize = streams.iter().map(|s| s.stats.subscribers).sum();
        // Series of their own for the most watched streams only.
        streams
            .sort_by(|a, b| b.stats.subscribers.cmp(&a.stats.subscribers).then(b.bytes_in.cmp(&a.bytes_in)));
        streams.truncate(self.max_streams);

        family(
            &mut enc,
            "qrelay_connections",
            "Connections open now, by transport",
            "transport",
            MetricType::Gauge,
            ConnKind::ALL.iter().map(|k| (k.label().to_owned(), gauge(conns.open_now(*k)))),
        )?;
        family(
            &mut enc,
            "qrelay_connections_accepted",
            "Connections accepted, by transport",
            "transport",
            MetricType::Counter,
            ConnKind::ALL.iter().map(|k| (k.label().to_owned(), counter(conns.accepted(*k)))),
        )?;
        single(&mut enc, "qrelay_publishers", "Streams being published", gauge(live.len() as u64))?;
        single(&mut enc, "qrelay_players", "Players attached (playing or waiting)", gauge(players as u64))?;

        let per_stream = |f: &dyn Fn(&crate::hub::StreamInfo) -> u64| {
            streams.iter().map(move |s| (stream_label(&s.session_id, allocations), f(s))).collect::<Vec<_>>()
        };
        let counters_of =
            |v: Vec<(String, u64)>| v.into_iter().map(|(k, v)| (k, counter(v))).collect::<Vec<_>>();
        let gauges = |v: Vec<(String, u64)>| v.into_iter().map(|(k, v)| (k, gauge(v))).collect::<Vec<_>>();
        family(
            &mut enc,
            "qrelay_stream_players",
            "Players of a stream",
            "stream",
            MetricType::Gauge,
            gauges(per_stream(&|s| s.stats.subscribers as u64)),
        )?;
        family(
            &mut enc,
            "qrelay_stream_bytes_in",
            "Media payload bytes received for a stream",
            "stream",
            MetricType::Counter,
            counters_of(per_stream(&|s| s.bytes_in)),
        )?;
        family(
            &mut enc,
            "qrelay_stream_bytes_out",
            "Media payload bytes sent to a stream's players",
            "stream",
            MetricType::Counter,
            counters_of(per_stream(&|s| s.bytes_out)),
        )?;
        family(
            &mut enc,
            "qrelay_stream_skipped_frames",
            "Frames a stream's players skipped because they fell behind",
            "stream",
            MetricType::Counter,
            counters_of(per_stream(&|s| s.stats.skipped)),
        )?;
        family(
            &mut enc,
            "qrelay_stream_queue_max_bytes",
            "Largest payload bytes queued for any one player of a stream now",
            "stream",
            MetricType::Gauge,
            gauges(per_stream(&|s| s.stats.max_queued_bytes as u64)),
        )?;
        family(
            &mut enc,
            "qrelay_stream_gop_cache_bytes",
            "Payload bytes in a stream's cached GOP",
            "stream",
            MetricType::Gauge,
            gauges(per_stream(&|s| s.gop_bytes as u64)),
        )?;

        let reasons = counters.snapshot();
        for (name, help, refusal) in [
            ("qrelay_refusals", "Connections, publishes and plays refused, by reason", true),
            ("qrelay_closes", "Sessions and connections ended, by reason", false),
        ] {
            family(
                &mut enc,
                name,
                help,
                "reason",
                MetricType::Counter,
                reasons
                    .iter()
                    .filter(|(r, _)| r.is_refusal() == refusal)
                    .map(|(r, n)| (r.name().to_owned(), counter(*n))),
            )?;
        }

        let quic = conns.quic_stats();
        let class = |f: &dyn Fn(&super::conns::QuicClassStats) -> f64| {
            quic.iter().map(|(k, s)| (k.label().to_owned(), ConstGauge::new(f(s)))).collect::<Vec<_>>()
        };
        let class_counter = |f: &dyn Fn(&super::conns::QuicClassStats) -> u64| {
            quic.iter().map(|(k, s)| (k.label().to_owned(), counter(f(s)))).collect::<Vec<_>>()
        };
        for (name, help, values) in [
            (
                "qrelay_quic_rtt_mean_seconds",
                "Mean smoothed RTT of live QUIC connections",
                class(&|s| s.rtt_mean.as_secs_f64()),
            ),
            (
                "qrelay_quic_rtt_max_seconds",
                "Largest smoothed RTT of live QUIC connections",
                class(&|s| s.rtt_max.as_secs_f64()),
            ),
            (
                "qrelay_quic_cwnd_mean_bytes",
                "Mean congestion window of live QUIC connections",
                class(&|s| s.cwnd_mean as f64),
            ),
            (
                "qrelay_quic_cwnd_min_bytes",
                "Smallest congestion window of live QUIC connections",
                class(&|s| s.cwnd_min as f64),
            ),
        ] {
            family(&mut enc, name, help, "class", MetricType::Gauge, values)?;
        }
        for (name, help, values) in [
            ("qrelay_quic_sent_packets", "QUIC packets sent", class_counter(&|s| s.sent_packets)),
            ("qrelay_quic_lost_packets", "QUIC packets declared lost", class_counter(&|s| s.lost_packets)),
            (
                "qrelay_quic_congestion_events",
                "QUIC congestion events",
                class_counter(&|s| s.congestion_events),
            ),
        ] {
            family(&mut enc, name, help, "class", MetricType::Counter, values)?;
        }

        let r = conns.redundancy_stats();
        single(
            &mut enc,
            "qrelay_quic_redundant_datagrams",
            "Extra copies of QUIC datagrams sent on lossy paths",
            ConstCounter::new(r.extra_datagrams),
        )?;
        single(
            &mut enc,
            "qrelay_quic_redundant_bytes",
            "Bytes of the extra copies of QUIC datagrams",
            ConstCounter::new(r.extra_bytes),
        )?;
        single(
            &mut enc,
            "qrelay_quic_redundant_paths",
            "Peers receiving redundant copies now",
            gauge(r.redundant_paths as u64),
        )?;

        if let Some(h) = &hooks {
            let read =
                |n: &std::sync::atomic::AtomicU64| counter(n.load(std::sync::atomic::Ordering::Relaxed));
            family(
                &mut enc,
                "qrelay_hook_notifications",
                "Unpublish and stop notifications to the HTTP hooks, by outcome",
                "outcome",
                MetricType::Counter,
                [
                    ("delivered", read(&h.delivered)),
                    ("failed", read(&h.failed)),
                    ("dropped", read(&h.dropped)),
                ]
                .map(|(k, v)| (k.to_owned(), v)),
            )?;
        }

        if let Some(p) = process::read() {
            single(
                &mut enc,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                gauge(p.rss_bytes),
            )?;
            single(
                &mut enc,
                "process_cpu_seconds",
                "User and system CPU time in seconds",
                ConstCounter::new(p.cpu_seconds),
            )?;
            single(&mut enc, "process_open_fds", "Open file descriptors", gauge(p.open_fds))?;
            if let Some(max) = p.max_fds {
                single(&mut enc, "process_max_fds", "Limit on open file descriptors", gauge(max))?;
            }
        }
        Ok(())
    }
}
