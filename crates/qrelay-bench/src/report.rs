//! The bench report: a table for people, JSON for scripts (`bench/compare.sh`). The JSON
//! is written by hand (flat keys, `null` for what was not measured) to keep the
//! dependency list as it is.

use std::fmt::Write as _;

use super::stats::Percentiles;

/// Server resource use over the measurement window (with `--server-pid`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ServerUsage {
    /// CPU seconds (user + system) in the window.
    pub cpu_s: f64,
    /// `cpu_s` over the window's length, in percent of one core.
    pub cpu_pct: f64,
    /// RSS before the players connected, MB.
    pub rss_base_mb: f64,
    /// RSS at the end of the window, MB.
    pub rss_end_mb: f64,
    /// Largest RSS sampled during the run, MB.
    pub rss_peak_mb: f64,
    /// The kernel's high-water mark (over the process's life), MB.
    pub hwm_mb: f64,
    /// (RSS at the end − RSS before players) / players playing, KiB.
    pub rss_per_player_kib: Option<f64>,
    /// CPU seconds per gigabit delivered to players.
    pub cpu_s_per_gbit: Option<f64>,
}

/// Idle-connection memory (`--idle N`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct IdleUsage {
    /// Connections that completed handshake and connect.
    pub connections: usize,
    /// Server RSS before, MB.
    pub rss_before_mb: f64,
    /// Server RSS with the connections open, MB.
    pub rss_after_mb: f64,
    /// Growth per connection, KiB.
    pub rss_per_conn_kib: Option<f64>,
}

/// Players joining and leaving alongside the steady ones (`--churn-rate`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ChurnUsage {
    /// Joins attempted per second.
    pub rate: f64,
    /// How long each churning player stays, ms.
    pub hold_ms: u64,
    /// Churning players started (connect attempts).
    pub joined: usize,
    /// Those that reached `NetStream.Play.Start`.
    pub played: usize,
    /// Those that failed before starting.
    pub failed: usize,
}

/// UDP receive counters of the players' QUIC connections, summed.
#[derive(Debug, Clone, Copy, Default)]
pub struct QuicRx {
    /// UDP datagrams the players received.
    pub datagrams: u64,
    /// UDP payload bytes the players received.
    pub bytes: u64,
    /// Receive system calls that returned datagrams (GRO and `recvmmsg` batch them).
    pub ios: u64,
    /// The largest path MTU (UDP payload) a player connection reached.
    pub max_path_mtu: u16,
}

impl QuicRx {
    /// Datagrams per MB (10^6 bytes) of UDP payload received.
    pub fn datagrams_per_mb(&self) -> Option<f64> {
        (self.bytes > 0).then(|| self.datagrams as f64 * 1e6 / self.bytes as f64)
    }
}

/// Everything one bench run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// `play` or `idle`.
    pub mode: &'static str,
    /// The URL given.
    pub url: String,
    /// `tcp` or `quic`.
    pub transport: &'static str,
    /// Streams published.
    pub streams: usize,
    /// Players asked for.
    pub players_total: usize,
    /// Players that reached `NetStream.Play.Start`.
    pub players_started: usize,
    /// Players that got every frame from their first keyframe on with no gap over 1 s.
    pub players_ok: usize,
    /// Players that never started.
    pub players_failed: usize,
    /// Players that ended or failed after starting, before the bench stopped them.
    pub players_dropped: usize,
    /// QUIC connections the players shared.
    pub quic_connections: usize,
    /// What the players' QUIC connections received (tunnel players): packetization
    /// counted, not timed, so a change that makes the server send more, smaller
    /// datagrams per delivered byte shows on any machine.
    pub quic_rx: Option<QuicRx>,
    /// Per-stream source bitrate (synthetic), Mbit/s.
    pub source_mbps: Option<f64>,
    /// Measurement window, seconds.
    pub duration_s: f64,
    /// Bytes players received in the window.
    pub delivered_bytes: u64,
    /// Sum over players, Mbit/s.
    pub delivered_mbps: f64,
    /// Play request to first video frame.
    pub first_frame_ms: Option<Percentiles>,
    /// Play request to first keyframe.
    pub first_keyframe_ms: Option<Percentiles>,
    /// Receive time − send time of frames published after the player joined.
    pub relay_latency_ms: Option<Percentiles>,
    /// Frames lost by players (sequence gaps).
    pub skips: u64,
    /// Largest wait between two video frames at any player, ms.
    pub max_gap_ms: f64,
    /// Frames publishers sent.
    pub frames_sent: u64,
    /// Churn (`--churn-rate`): players that joined and left during the run, apart from
    /// the steady ones every other figure is about.
    pub churn: Option<ChurnUsage>,
    /// Server resource use.
    pub server: Option<ServerUsage>,
    /// The bench's own CPU seconds in the window.
    pub bench_cpu_s: f64,
    /// The bench's CPU in the window, percent of one core.
    pub bench_cpu_pct: f64,
    /// The whole machine's CPU in the window, percent of all cores.
    pub host_cpu_pct: Option<f64>,
    /// Softirq share of the machine's CPU in the window, percent of all cores.
    pub host_softirq_pct: Option<f64>,
    /// Cores of the machine.
    pub host_cores: usize,
    /// The bench's peak RSS, MB.
    pub bench_rss_peak_mb: f64,
    /// Idle-connection memory.
    pub idle: Option<IdleUsage>,
    /// Distinct player errors with their counts, most frequent first.
    pub errors: Vec<(String, usize)>,
}

enum J {
    Null,
    Num(f64),
    Int(u64),
    Str(String),
    Obj(Vec<(&'static str, J)>),
    Arr(Vec<J>),
}

impl J {
    fn opt(v: Option<f64>) -> J {
        v.map_or(J::Null, J::Num)
    }

    fn write(&self, out: &mut String) {
        match self {
            J::Null => out.push_str("null"),
            J::Num(v) if v.is_finite() => {
                let _ = write!(out, "{}", (v * 1000.0).round() / 1000.0);
            }
            J::Num(_) => out.push_str("null"),
            J::Int(v) => {
                let _ = write!(out, "{v}");
            }
            J::Str(s) => {
                out.push('"');
                for c in s.chars() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        c if (c as u32) < 0x20 => {
                            let _ = write!(out, "\\u{:04x}", c as u32);
                        }
                        c => out.push(c),
                    }
                }
                out.push('"');
            }
            J::Obj(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    let _ = write!(out, "\"{k}\": ");
                    v.write(out);
                }
                out.push('}');
            }
            J::Arr(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    v.write(out);
                }
                out.push(']');
            }
        }
    }
}

fn pct(p: &Option<Percentiles>) -> J {
    match p {
        None => J::Null,
        Some(p) => J::Obj(vec![
            ("p50", J::Num(p.p50)),
            ("p90", J::Num(p.p90)),
            ("p99", J::Num(p.p99)),
            ("max", J::Num(p.max)),
            ("count", J::Int(p.count)),
        ]),
    }
}

impl Report {
    /// The report as one JSON object.
    pub fn to_json(&self) -> String {
        let s = self.server;
        let idle = self.idle;
        let fields = vec![
            ("mode", J::Str(self.mode.into())),
            ("url", J::Str(self.url.clone())),
            ("transport", J::Str(self.transport.into())),
            ("streams", J::Int(self.streams as u64)),
            ("players_total", J::Int(self.players_total as u64)),
            ("players_started", J::Int(self.players_started as u64)),
            ("players_ok", J::Int(self.players_ok as u64)),
            ("players_failed", J::Int(self.players_failed as u64)),
            ("players_dropped", J::Int(self.players_dropped as u64)),
            ("quic_connections", J::Int(self.quic_connections as u64)),
            ("quic_rx_datagrams", self.quic_rx.map_or(J::Null, |q| J::Int(q.datagrams))),
            ("quic_rx_bytes", self.quic_rx.map_or(J::Null, |q| J::Int(q.bytes))),
            ("quic_rx_ios", self.quic_rx.map_or(J::Null, |q| J::Int(q.ios))),
            ("quic_datagrams_per_mb", J::opt(self.quic_rx.and_then(|q| q.datagrams_per_mb()))),
            ("quic_max_path_mtu", self.quic_rx.map_or(J::Null, |q| J::Int(q.max_path_mtu.into()))),
            ("source_mbps", J::opt(self.source_mbps)),
            ("duration_s", J::Num(self.duration_s)),
            ("delivered_bytes", J::Int(self.delivered_bytes)),
            ("delivered_mbps", J::Num(self.delivered_mbps)),
            ("first_frame_ms", pct(&self.first_frame_ms)),
            ("first_keyframe_ms", pct(&self.first_keyframe_ms)),
            ("relay_latency_ms", pct(&self.relay_latency_ms)),
            ("skips", J::Int(self.skips)),
            ("max_gap_ms", J::Num(self.max_gap_ms)),
            ("frames_sent", J::Int(self.frames_sent)),
            ("churn_rate", J::opt(self.churn.map(|c| c.rate))),
            ("churn_joined", self.churn.map_or(J::Null, |c| J::Int(c.joined as u64))),
            ("churn_played", self.churn.map_or(J::Null, |c| J::Int(c.played as u64))),
            ("churn_failed", self.churn.map_or(J::Null, |c| J::Int(c.failed as u64))),
            ("server_cpu_s", J::opt(s.map(|s| s.cpu_s))),
            ("server_cpu_pct", J::opt(s.map(|s| s.cpu_pct))),
            ("server_rss_base_mb", J::opt(s.map(|s| s.rss_base_mb))),
            ("server_rss_end_mb", J::opt(s.map(|s| s.rss_end_mb))),
            ("server_rss_peak_mb", J::opt(s.map(|s| s.rss_peak_mb))),
            ("server_hwm_mb", J::opt(s.map(|s| s.hwm_mb))),
            ("server_rss_per_player_kib", J::opt(s.and_then(|s| s.rss_per_player_kib))),
            ("cpu_s_per_gbit", J::opt(s.and_then(|s| s.cpu_s_per_gbit))),
            ("bench_cpu_s", J::Num(self.bench_cpu_s)),
            ("bench_cpu_pct", J::Num(self.bench_cpu_pct)),
            ("bench_rss_peak_mb", J::Num(self.bench_rss_peak_mb)),
            ("host_cores", J::Int(self.host_cores as u64)),
            ("host_cpu_pct", J::opt(self.host_cpu_pct)),
            ("host_softirq_pct", J::opt(self.host_softirq_pct)),
            ("idle_connections", idle.map_or(J::Null, |i| J::Int(i.connections as u64))),
            ("idle_rss_before_mb", J::opt(idle.map(|i| i.rss_before_mb))),
            ("idle_rss_after_mb", J::opt(idle.map(|i| i.rss_after_mb))),
            ("idle_rss_per_conn_kib", J::opt(idle.and_then(|i| i.rss_per_conn_kib))),
            (
                "errors",
                J::Arr(
                    self.errors
                        .iter()
                        .map(|(e, n)| {
                            J::Obj(vec![("error", J::Str(e.clone())), ("count", J::Int(*n as u64))])
                        })
                        .collect(),
                ),
            ),
        ];
        let mut out = String::new();
        J::Obj(fields).write(&mut out);
        out.push('\n');
        out
    }

    /// The report as a table for a terminal.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let row = |t: &mut String, k: &str, v: String| {
            let _ = writeln!(t, "  {k:<18} {v}");
        };
        let p = |p: &Option<Percentiles>| match p {
            Some(p) => format!(
                "p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2} ms  (n={})",
                p.p50, p.p90, p.p99, p.max, p.count
            ),
            None => "-".into(),
        };
        let _ = writeln!(t, "qrelay bench ({}) {} [{}]", self.mode, self.url, self.transport);
        if let Some(i) = self.idle {
            row(&mut t, "idle connections", format!("{}", i.connections));
            row(&mut t, "server rss", format!("{:.1} MB -> {:.1} MB", i.rss_before_mb, i.rss_after_mb));
            row(&mut t, "rss per conn", i.rss_per_conn_kib.map_or("-".into(), |k| format!("{k:.1} KiB")));
        } else {
            row(
                &mut t,
                "players",
                format!(
                    "{} ok / {} total ({} started, {} failed, {} dropped{})",
                    self.players_ok,
                    self.players_total,
                    self.players_started,
                    self.players_failed,
                    self.players_dropped,
                    if self.quic_connections > 0 {
                        format!(", {} QUIC connections", self.quic_connections)
                    } else {
                        String::new()
                    }
                ),
            );
            row(
                &mut t,
                "delivered",
                format!(
                    "{:.1} Mbit/s over {:.1} s ({} streams{})",
                    self.delivered_mbps,
                    self.duration_s,
                    self.streams,
                    self.source_mbps.map_or(String::new(), |m| format!(" of {m:.2} Mbit/s"))
                ),
            );
            row(&mut t, "first frame", p(&self.first_frame_ms));
            row(&mut t, "first keyframe", p(&self.first_keyframe_ms));
            row(&mut t, "relay latency", p(&self.relay_latency_ms));
            row(&mut t, "skips", format!("{} (max gap {:.0} ms)", self.skips, self.max_gap_ms));
            if let Some(q) = self.quic_rx {
                row(
                    &mut t,
                    "quic receive",
                    format!(
                        "{} datagrams, {:.1} per MB, {} receive calls, path MTU up to {}",
                        q.datagrams,
                        q.datagrams_per_mb().unwrap_or(0.0),
                        q.ios,
                        q.max_path_mtu
                    ),
                );
            }
            if let Some(c) = self.churn {
                row(
                    &mut t,
                    "churn",
                    format!(
                        "{:.0}/s joining for {} ms each: {} joined, {} played, {} failed",
                        c.rate, c.hold_ms, c.joined, c.played, c.failed
                    ),
                );
            }
        }
        if let Some(s) = self.server {
            row(
                &mut t,
                "server cpu",
                format!(
                    "{:.2} s ({:.1}% of a core){}",
                    s.cpu_s,
                    s.cpu_pct,
                    s.cpu_s_per_gbit.map_or(String::new(), |c| format!(", {c:.3} s/Gbit"))
                ),
            );
            row(
                &mut t,
                "server rss",
                format!(
                    "base {:.1} MB, end {:.1} MB, peak {:.1} MB{}",
                    s.rss_base_mb,
                    s.rss_end_mb,
                    s.rss_peak_mb,
                    s.rss_per_player_kib.map_or(String::new(), |k| format!(", {k:.1} KiB/player"))
                ),
            );
        }
        row(
            &mut t,
            "bench cost",
            format!(
                "{:.2} s cpu ({:.1}% of a core), rss peak {:.1} MB",
                self.bench_cpu_s, self.bench_cpu_pct, self.bench_rss_peak_mb
            ),
        );
        if let Some(h) = self.host_cpu_pct {
            row(
                &mut t,
                "machine cpu",
                format!(
                    "{h:.1}% of {} cores busy ({:.1}% softirq)",
                    self.host_cores,
                    self.host_softirq_pct.unwrap_or(0.0)
                ),
            );
        }
        for (e, n) in self.errors.iter().take(5) {
            row(&mut t, "error", format!("{n} x {e}"));
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_keys_scripts_read() {
        let r = Report {
            mode: "play",
            url: "rtmp://h/live/\"b\"".into(),
            transport: "tcp",
            players_ok: 3,
            players_total: 4,
            delivered_mbps: 12.3456,
            relay_latency_ms: Some(Percentiles { p50: 1.0, p90: 2.0, p99: 3.0, max: 4.0, count: 9 }),
            server: Some(ServerUsage { cpu_s: 1.5, cpu_s_per_gbit: Some(0.25), ..ServerUsage::default() }),
            errors: vec![("closed\n".into(), 1)],
            ..Report::default()
        };
        let j = r.to_json();
        assert!(j.contains("\"players_ok\": 3"));
        assert!(j.contains("\"delivered_mbps\": 12.346"));
        assert!(j.contains(
            "\"relay_latency_ms\": {\"p50\": 1, \"p90\": 2, \"p99\": 3, \"max\": 4, \"count\": 9}"
        ));
        assert!(j.contains("\"first_frame_ms\": null"));
        assert!(j.contains("\"cpu_s_per_gbit\": 0.25"));
        assert!(j.contains("\"idle_rss_per_conn_kib\": null"));
        assert!(j.contains("rtmp://h/live/\\\"b\\\""));
        assert!(j.contains("\"closed\\n\""));
        assert!(r.table().contains("3 ok / 4 total"));
    }
}
