#!/usr/bin/env bash
# Measured comparison of qrelay with nginx-rtmp on loopback, reproducible:
#
#   bench/compare.sh                      # defaults below
#   DURATION=30 REPS=3 bench/compare.sh   # longer, more repetitions
#
# What it does:
#   1. builds qrelay (release) and copies the binary aside, so a rebuild during the run
#      does not change what is measured;
#   2. installs nginx with the RTMP module from Debian if missing
#      (apt-get install nginx-light libnginx-mod-rtmp);
#   3. for each load, REPS times, in turn (A B C D A B C D ...): a fresh qrelay over TCP,
#      a fresh nginx-rtmp (one worker, `live on`, no access log), a fresh qrelay over
#      QUIC (the tunnel, and RoQR; one QUIC connection per player, as real players
#      connect), and qrelay over TCP with
#      `tcp_nodelay = false` (Nagle on, as nginx-rtmp leaves its sockets), each measured
#      by the same `qrelay bench` with --server-pid (nginx: master + worker);
#   4. idle memory: N connections that handshake and `connect` but never play (over
#      QUIC: N QUIC connections, one session each);
#   5. prints a summary (medians over the repetitions, ratios qrelay/nginx and
#      QUIC/TCP) and writes it with the exact command to bench/RESULTS.md.
#
# Environment: DURATION (s, default 20), REPS (2), LOADS ("streams:players ..."),
# IDLE_CONNS (1000), QRELAY_PORT (19350), NGINX_PORT (19351), BITRATE (3M), AUDIO (1:
# synthetic AAC beside the video, as `qrelay bench` does by default; 0: video only),
# OUT (results dir, default a temp dir), RESULTS (bench/RESULTS.md), SKIP_QUIC (0/1: the
# tunnel, RoQR and WebTransport), SKIP_TUNNEL (0/1: the tunnel only), SKIP_ROQR (0/1: RoQR
# only), SKIP_WEBTRANSPORT (0/1: qrelay's WebTransport players, beside its RoQR ones),
# SKIP_NAGLE (0/1), SKIP_HTTP_FLV (0/1: qrelay's HTTP-FLV players, beside its RTMP ones), QRELAY_BIN (use this binary instead of building), BASE_BIN (another
# qrelay build, e.g. the commit before a change: adds target qrelay-base, over TCP, run in
# turn with the others, and a table of both builds against nginx-rtmp).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${DURATION:-20}
REPS=${REPS:-2}
LOADS=${LOADS:-"1:200 1:500 1:1000 10:500"}
IDLE_CONNS=${IDLE_CONNS:-1000}
QPORT=${QRELAY_PORT:-19350}
NPORT=${NGINX_PORT:-19351}
BITRATE=${BITRATE:-3M}
AUDIO=${AUDIO:-1}
AUDIO_ARGS=()
[[ $AUDIO == 0 ]] && AUDIO_ARGS=(--no-audio)
SKIP_QUIC=${SKIP_QUIC:-0}
SKIP_TUNNEL=${SKIP_TUNNEL:-0}
SKIP_ROQR=${SKIP_ROQR:-0}
SKIP_WEBTRANSPORT=${SKIP_WEBTRANSPORT:-0}
SKIP_NAGLE=${SKIP_NAGLE:-0}
SKIP_HTTP_FLV=${SKIP_HTTP_FLV:-0}
RESULTS=${RESULTS:-$ROOT/bench/RESULTS.md}
WORK=$(mktemp -d /tmp/qrelay-compare.XXXXXX)
OUT=${OUT:-$WORK/results}
mkdir -p "$OUT"
COMMAND="DURATION=$DURATION REPS=$REPS LOADS=\"$LOADS\" IDLE_CONNS=$IDLE_CONNS BITRATE=$BITRATE AUDIO=$AUDIO"
[[ $SKIP_QUIC == 0 ]] || COMMAND+=" SKIP_QUIC=1"
[[ $SKIP_TUNNEL == 0 ]] || COMMAND+=" SKIP_TUNNEL=1"
[[ $SKIP_ROQR == 0 ]] || COMMAND+=" SKIP_ROQR=1"
[[ $SKIP_WEBTRANSPORT == 0 ]] || COMMAND+=" SKIP_WEBTRANSPORT=1"
[[ $SKIP_NAGLE == 0 ]] || COMMAND+=" SKIP_NAGLE=1"
[[ $SKIP_HTTP_FLV == 0 ]] || COMMAND+=" SKIP_HTTP_FLV=1"
[[ -z "${BASE_BIN:-}" ]] || COMMAND+=" BASE_BIN=(previous build)"
COMMAND+=" bench/compare.sh"

log() { printf '\n== %s\n' "$*" >&2; }

# --- qrelay binary ---------------------------------------------------------------------
if [[ -n "${QRELAY_BIN:-}" ]]; then
    cp "$QRELAY_BIN" "$WORK/qrelay"
else
    log "building qrelay (release)"
    cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
    cp "$ROOT/target/release/qrelay" "$WORK/qrelay"
fi
QRELAY="$WORK/qrelay"
if [[ -n "${BASE_BIN:-}" ]]; then
    cp "$BASE_BIN" "$WORK/qrelay-base"
fi

# --- nginx-rtmp -----------------------------------------------------------------------
NGINX_MODULE=/usr/lib/nginx/modules/ngx_rtmp_module.so
if ! command -v nginx >/dev/null || [[ ! -f $NGINX_MODULE ]]; then
    log "installing nginx with the RTMP module"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light libnginx-mod-rtmp >/dev/null
fi
sed -e "s#@WORK@#$WORK#g" -e "s#@PORT@#$NPORT#g" -e "s#@MODULE@#$NGINX_MODULE#g" \
    "$ROOT/bench/nginx-rtmp.conf.in" >"$WORK/nginx.conf"
nginx -t -q -c "$WORK/nginx.conf" -p "$WORK/" -e "$WORK/nginx-error.log"

# --- server lifecycle -----------------------------------------------------------------
SERVER_PID=""
SERVER_PIDS=()

wait_port() {
    local port=$1
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "nothing listening on $port" >&2
    return 1
}

# start_qrelay [CONFIG [BINARY]]
start_qrelay() {
    local config=() bin=${2:-$QRELAY}
    [[ -z "${1:-}" ]] || config=(--config "$1")
    RUST_LOG=error "$bin" serve --listen "127.0.0.1:$QPORT" --cert-dir "$WORK/certs" "${config[@]}" \
        >>"$WORK/qrelay.log" 2>&1 &
    SERVER_PID=$!
    SERVER_PIDS=("$SERVER_PID")
    wait_port "$QPORT"
}

start_nginx() {
    nginx -c "$WORK/nginx.conf" -p "$WORK/" -e "$WORK/nginx-error.log" &
    SERVER_PID=$!
    wait_port "$NPORT"
    local worker
    worker=$(pgrep -P "$SERVER_PID" | head -1)
    SERVER_PIDS=("$SERVER_PID" "$worker")
}

stop_server() {
    if [[ -n "$SERVER_PID" ]]; then
        kill -INT "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
trap 'stop_server; rm -rf "$WORK/certs"' EXIT

server_args() {
    local p
    for p in "${SERVER_PIDS[@]}"; do printf -- '--server-pid %s ' "$p"; done
}

printf 'tcp_nodelay = false\n' >"$WORK/nagle.toml"

# One QUIC connection per player (what real players do); sharing connections would
# hide the per-connection cost (packets, ACKs, timers, wake-ups) the QUIC rows measure.
QUIC_ARGS=(--quic-streams-per-conn 1)

# run_one TARGET STREAMS PLAYERS REP: TARGET is qrelay-tcp, nginx, qrelay-quic (tunnel),
# qrelay-roqr, qrelay-webtransport, qrelay-http-flv or qrelay-nagle.
run_one() {
    local target=$1 streams=$2 players=$3 rep=$4 url extra=() log=${RUST_LOG:-info}
    case $target in
        qrelay-tcp) start_qrelay; url="rtmp://127.0.0.1:$QPORT/live/b" ;;
        qrelay-base) start_qrelay "" "$WORK/qrelay-base"; url="rtmp://127.0.0.1:$QPORT/live/b" ;;
        qrelay-nagle) start_qrelay "$WORK/nagle.toml"; url="rtmp://127.0.0.1:$QPORT/live/b" ;;
        qrelay-quic) start_qrelay; url="rtmp+quic://127.0.0.1:$QPORT/live/b?mode=tunnel"; extra=(--ca "$WORK/certs/dev-ca.pem" "${QUIC_ARGS[@]}") ;;
        qrelay-roqr) start_qrelay; url="rtmp+quic://127.0.0.1:$QPORT/live/b?mode=roqr"; extra=(--ca "$WORK/certs/dev-ca.pem") ;;
        qrelay-http-flv) start_qrelay; url="rtmp://127.0.0.1:$QPORT/live/b"; extra=(--http-flv) ;;
        # Published over RoQR as the qrelay-roqr runs are, so the two differ only in their
        # players. The players pin the relay's h3 certificate by its hash, as a page does;
        # web-transport-quinn warns of every session the bench closes itself at the end.
        qrelay-webtransport)
            start_qrelay; url="rtmp+quic://127.0.0.1:$QPORT/live/b?mode=roqr"
            extra=(--webtransport --ca "$WORK/certs/dev-ca.pem"); log="$log,web_transport_quinn::session=error" ;;
        nginx) start_nginx; url="rtmp://127.0.0.1:$NPORT/live/b" ;;
    esac
    local json="$OUT/s${streams}-p${players}.${target}.${rep}.json"
    log "$target: $streams stream(s) x $players players, rep $rep"
    # shellcheck disable=SC2046
    RUST_LOG=$log "$QRELAY" bench --url "$url" --streams "$streams" --players "$players" --duration "$DURATION" \
        --bitrate "$BITRATE" "${AUDIO_ARGS[@]}" --quiet --json "$json" $(server_args) "${extra[@]}" >&2 \
        || echo "bench failed for $target (see above)" >&2
    stop_server
    sleep 1
}

run_idle() {
    local target=$1 url extra=()
    case $target in
        qrelay-tcp) start_qrelay; url="rtmp://127.0.0.1:$QPORT/live/idle" ;;
        qrelay-quic) start_qrelay; url="rtmp+quic://127.0.0.1:$QPORT/live/idle?mode=tunnel"; extra=(--ca "$WORK/certs/dev-ca.pem" "${QUIC_ARGS[@]}") ;;
        nginx) start_nginx; url="rtmp://127.0.0.1:$NPORT/live/idle" ;;
    esac
    log "$target: $IDLE_CONNS idle connections"
    # shellcheck disable=SC2046
    "$QRELAY" bench --url "$url" --idle "$IDLE_CONNS" --quiet --json "$OUT/idle.$target.json" \
        $(server_args) "${extra[@]}" >&2 || echo "idle bench failed for $target" >&2
    stop_server
    sleep 1
}

TARGETS=(qrelay-tcp nginx)
[[ -z "${BASE_BIN:-}" ]] || TARGETS+=(qrelay-base)
[[ $SKIP_QUIC == 1 || $SKIP_TUNNEL == 1 ]] || TARGETS+=(qrelay-quic)
[[ $SKIP_QUIC == 1 || $SKIP_ROQR == 1 ]] || TARGETS+=(qrelay-roqr)
[[ $SKIP_QUIC == 1 || $SKIP_WEBTRANSPORT == 1 ]] || TARGETS+=(qrelay-webtransport)
[[ $SKIP_NAGLE == 1 ]] || TARGETS+=(qrelay-nagle)
[[ $SKIP_HTTP_FLV == 1 ]] || TARGETS+=(qrelay-http-flv)

for rep in $(seq "$REPS"); do
    for load in $LOADS; do
        for target in "${TARGETS[@]}"; do
            run_one "$target" "${load%%:*}" "${load##*:}" "$rep"
        done
    done
done
for target in "${TARGETS[@]}"; do
    # Idle connections never get media: Nagle changes nothing there (nor the fan-out
    # changes a base build is compared for).
    # RoQR idles like the tunnel (a QUIC connection per session): measured once, as the tunnel.
    # Browser players (HTTP-FLV, WebTransport) have no idle mode: they play or they go.
    [[ $target == qrelay-nagle || $target == qrelay-base || $target == qrelay-roqr || $target == qrelay-http-flv \
        || $target == qrelay-webtransport || $IDLE_CONNS == 0 ]] || run_idle "$target"
done

# --- summary --------------------------------------------------------------------------
MACHINE="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), \
Linux $(uname -r), $(nginx -v 2>&1 | sed 's#nginx version: ##'), $("$QRELAY" --version)"
python3 - "$OUT" "$LOADS" "$COMMAND" "$MACHINE" "$DURATION" "$REPS" "$BITRATE" "$AUDIO" <<'PY' | tee "$RESULTS"
"""Summarizes bench/compare.sh's JSON results as Markdown (medians over repetitions).

usage: python3 - OUT_DIR LOADS COMMAND MACHINE DURATION REPS BITRATE AUDIO
"""
import glob
import json
import os
import statistics
import sys

TARGETS = ["qrelay-tcp", "nginx", "qrelay-quic", "qrelay-roqr", "qrelay-nagle", "qrelay-base", "qrelay-http-flv",
           "qrelay-webtransport"]


def load_runs(out, name):
    runs = {}
    for target in TARGETS:
        files = sorted(glob.glob(os.path.join(out, f"{name}.{target}.*.json")))
        runs[target] = [json.load(open(f)) for f in files]
    return runs


def get(run, path):
    v = run
    for k in path.split("."):
        if not isinstance(v, dict):
            return None
        v = v.get(k)
    return v


def med(runs, path):
    vals = [get(r, path) for r in runs]
    vals = [v for v in vals if isinstance(v, (int, float))]
    return statistics.median(vals) if vals else None


def fmt(v, digits=2):
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits}f}"


def fmt_ratio(v):
    if v is None:
        return "-"
    return f"{v:.3g}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def main():
    out, loads, command, machine, duration, reps, bitrate, audio = sys.argv[1:9]
    lines = []
    p = lines.append
    p("## Performance: qrelay vs nginx-rtmp (measured)")
    p("")
    p(f"Command: `{command}` (each run {duration} s after every player connected, "
      f"medians of {reps} repetitions, run in turn A B C D A B C D; synthetic {bitrate}bit/s "
      "H.264, 30 fps, 2 s GOP" + (" + 128 kbit/s AAC" if audio != "0" else ", no audio")
      + "; one bench process on the same machine).")
    p("")
    p(f"Machine: {machine}.")
    p("")
    p("Server CPU is the server process's utime+stime in the window (nginx: master + its one "
      "worker); loopback TCP work done in softirq context is not always charged to a process, "
      "so the machine column shows total load. Latency = receive time - send time of each "
      "video frame on the bench's one monotonic clock (publisher -> server -> player), frames "
      "a late joiner gets from a GOP cache excluded. First frame = play request to first video "
      "frame (nginx-rtmp has no GOP cache: its players wait for the next keyframe).")
    p("")
    p("| load | server | players ok | Mbit/s | server CPU % | CPU s/Gbit | latency p50 / p99 ms "
      "| first frame p50 / p99 ms | peak RSS MB | KiB/player | bench CPU % | machine CPU % |")
    p("|---|---|---|---|---|---|---|---|---|---|---|---|")
    ratios = []
    base_rows = []
    flv_rows = []
    wt_rows = []
    for load in loads.split():
        streams, players = load.split(":")
        name = f"s{streams}-p{players}"
        runs = load_runs(out, name)
        label = f"{streams} x {int(players) // int(streams)}" if streams != "1" else f"1 x {players}"
        m = {}
        for target in TARGETS:
            rs = runs[target]
            if not rs:
                continue
            m[target] = {
                "gbit": med(rs, "cpu_s_per_gbit"),
                "p99": med(rs, "relay_latency_ms.p99"),
                "ff50": med(rs, "first_frame_ms.p50"),
                "rss": med(rs, "server_rss_peak_mb"),
                "host": med(rs, "host_cpu_pct"),
            }
            ok = med(rs, "players_ok")
            total = med(rs, "players_total")
            p(f"| {label} | {target} | {fmt(ok, 0)}/{fmt(total, 0)} | {fmt(med(rs, 'delivered_mbps'), 0)} "
              f"| {fmt(med(rs, 'server_cpu_pct'), 1)} | {fmt(m[target]['gbit'], 3)} "
              f"| {fmt(med(rs, 'relay_latency_ms.p50'))} / {fmt(m[target]['p99'])} "
              f"| {fmt(m[target]['ff50'])} / {fmt(med(rs, 'first_frame_ms.p99'))} "
              f"| {fmt(m[target]['rss'], 1)} | {fmt(med(rs, 'server_rss_per_player_kib'), 1)} "
              f"| {fmt(med(rs, 'bench_cpu_pct'), 1)} | {fmt(med(rs, 'host_cpu_pct'), 0)} |")
        q, n, u, a = m.get("qrelay-tcp"), m.get("nginx"), m.get("qrelay-quic"), m.get("qrelay-nagle")
        ratios.append((label, q, n, u, a, m.get("qrelay-roqr")))
        if "qrelay-http-flv" in m:
            flv_rows.append((label, m["qrelay-http-flv"], q))
        if "qrelay-webtransport" in m:
            wt_rows.append((label, m["qrelay-webtransport"], m.get("qrelay-roqr")))
        if "qrelay-base" in m:
            base_rows.append((label, runs))
    p("")
    p("Ratios (below 1 = qrelay better). qrelay is over TCP with its defaults; machine = whole "
      "machine CPU (server, bench and softirq) for the same delivery; Nagle = qrelay with "
      "`tcp_nodelay = false`, the socket setting nginx-rtmp runs with; QUIC/TCP is qrelay over "
      "the QUIC tunnel vs qrelay over TCP, RoQR/TCP the same for RoQR (one QUIC connection per "
      "player in both); Gbit/s per core = delivered Gbit/s per server CPU core (1 / CPU s/Gbit):")
    p("")
    p("| load | CPU s/Gbit qrelay/nginx | latency p99 qrelay/nginx | first frame p50 qrelay/nginx "
      "| peak RSS qrelay/nginx | machine CPU qrelay/nginx | CPU s/Gbit Nagle/nginx "
      "| latency p99 Nagle/nginx | CPU s/Gbit QUIC/TCP | latency p99 QUIC/TCP "
      "| CPU s/Gbit RoQR/TCP | latency p99 RoQR/TCP | Gbit/s per core TCP / tunnel / RoQR |")
    p("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, q, n, u, a, r in ratios:
        g = lambda x, y, k: fmt_ratio(ratio(x and x[k], y and y[k]))  # noqa: E731
        per_core = " / ".join(fmt(ratio(1.0, x and x["gbit"]), 1) for x in (q, u, r))
        p(f"| {label} | {g(q, n, 'gbit')} | {g(q, n, 'p99')} | {g(q, n, 'ff50')} | {g(q, n, 'rss')} "
          f"| {g(q, n, 'host')} | {g(a, n, 'gbit')} | {g(a, n, 'p99')} | {g(u, q, 'gbit')} | {g(u, q, 'p99')} "
          f"| {g(r, q, 'gbit')} | {g(r, q, 'p99')} | {per_core} |")
    if flv_rows:
        p("")
        p("HTTP-FLV players against RTMP players of the same build over TCP (below 1 = HTTP-FLV better):")
        p("")
        p("| load | CPU s/Gbit HTTP-FLV/RTMP | latency p99 HTTP-FLV/RTMP | first frame p50 HTTP-FLV/RTMP |")
        p("|---|---|---|---|")
        for label, f, q in flv_rows:
            g = lambda x, y, k: fmt_ratio(ratio(x and x[k], y and y[k]))  # noqa: E731
            p(f"| {label} | {g(f, q, 'gbit')} | {g(f, q, 'p99')} | {g(f, q, 'ff50')} |")
    if wt_rows:
        p("")
        p("WebTransport players against RoQR players of the same build, both published over RoQR, one "
          "QUIC connection per player (below 1 = WebTransport better):")
        p("")
        p("| load | CPU s/Gbit WebTransport/RoQR | latency p99 WebTransport/RoQR | first frame p50 WebTransport/RoQR |")
        p("|---|---|---|---|")
        for label, w, r in wt_rows:
            g = lambda x, y, k: fmt_ratio(ratio(x and x[k], y and y[k]))  # noqa: E731
            p(f"| {label} | {g(w, r, 'gbit')} | {g(w, r, 'p99')} | {g(w, r, 'ff50')} |")
    if base_rows:
        p("")
        p("This build (qrelay-tcp) and the previous one (qrelay-base) against nginx-rtmp, CPU s/Gbit "
          "per repetition (each repetition ran the three in turn) and the median of the per-rep ratios:")
        p("")
        p("| load | rep | this / nginx | base / nginx | this / base |")
        p("|---|---|---|---|---|")
        for label, runs in base_rows:
            per = {t: [get(r, "cpu_s_per_gbit") for r in runs[t]] for t in ("qrelay-tcp", "nginx", "qrelay-base")}
            cols = []
            for i, (q, n, b) in enumerate(zip(per["qrelay-tcp"], per["nginx"], per["qrelay-base"])):
                row = (ratio(q, n), ratio(b, n), ratio(q, b))
                cols.append(row)
                p(f"| {label} | {i + 1} | {fmt_ratio(row[0])} | {fmt_ratio(row[1])} | {fmt_ratio(row[2])} |")
            meds = [statistics.median([c[k] for c in cols if c[k] is not None] or [0]) for k in range(3)]
            p(f"| {label} | median | {fmt_ratio(meds[0])} | {fmt_ratio(meds[1])} | {fmt_ratio(meds[2])} |")
    p("")
    p("Idle connections (handshake + `connect`, never play):")
    p("")
    p("| server | connections | RSS before MB | RSS after MB | KiB per connection |")
    p("|---|---|---|---|---|")
    for target in TARGETS:
        f = os.path.join(out, f"idle.{target}.json")
        if not os.path.exists(f):
            continue
        r = json.load(open(f))
        p(f"| {target} | {r.get('idle_connections')} | {fmt(r.get('idle_rss_before_mb'), 1)} "
          f"| {fmt(r.get('idle_rss_after_mb'), 1)} | {fmt(r.get('idle_rss_per_conn_kib'), 1)} |")
    p("")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
PY
log "results: $RESULTS (raw JSON in $OUT)"
