#!/usr/bin/env bash
# browser.sh - a browser player behind the impaired link: the relay's own player page
# (<qrelay-player>, WebCodecs) in headless Chromium, over WebTransport and over HTTP-FLV.
#
# `qrelay serve` and a live publisher (ffmpeg: lavfi testsrc 1280x720 30 fps, x264
# zerolatency ~3 Mbit/s, GOP 1 s, AAC, RTMP) sit in the server namespace, so the publish
# hop is unimpaired; headless Chromium (tests/browser/drive.mjs, Node.js) sits in the
# client namespace and opens http://SERVER:PORT/play/live/lab?transport=T across the
# impaired link (netlab.sh: NFQUEUE delay/jitter/loss, tbf rate, both directions). The
# page's stats attributes are sampled every 250 ms; browser_analyze.py turns them into
# frames decoded / expected, dropped, latency (relay ingest -> display; the relay's wall
# clock and the browser's are this machine's), stalls and first-frame time.
#
# Usage (root; needs ip, tc, iptables, python3, ffmpeg, node and chromium):
#   bench/netlab/browser.sh
#   CASES="50:2" DURATION=30 TRANSPORTS="webtransport" bench/netlab/browser.sh
#
# Environment (defaults in brackets):
#   CASES       RTT_MS:LOSS_PCT entries and/or `drop` [50:2 100:5 drop]
#   TRANSPORTS  the page's forced transport, `webtransport` and/or `http-flv`
#               [webtransport http-flv]
#   DURATION    seconds the page is sampled per run [60]
#   JITTER      ms, each direction [5]; RATE: link Mbit/s, each direction [20]
#   DROP_RTT, DROP_LOSS   path of the `drop` case [50, 0] (as run.sh)
#   DROP_RATE, DROP_AT, DROP_FOR   the link falls to DROP_RATE Mbit/s [2] DROP_AT s [10]
#               after the browser starts, for DROP_FOR s [20] (bottleneck queue:
#               NETLAB_QUEUE_MS, netlab.sh's default 50 ms: a shallow queue)
#   TCP_CC      the relay's TCP congestion control towards the browser [bbr]
#   QUIC_CC     the relay's --quic-congestion [bbr]
#   QUIC_REDUNDANCY  the relay's --quic-redundancy, `auto` or `off` [auto, its default]
#   VBITRATE    publisher video bit rate [3M]; X264_PRESET [veryfast]; FPS [30]
#   WORK        certificates and results [target/netlab]; OUT [WORK/browser-DATE]
#   QRELAY      binary [target/release/qrelay, built with cargo build --release --locked]
#   CHROMIUM    browser binary [chromium]
#   TREAT_SECURE  1: start Chromium with --unsafely-treat-insecure-origin-as-secure for
#               the relay's http:// origin [1]. WebCodecs (VideoDecoder) and WebTransport
#               exist only in secure contexts; http://10.201.0.1:1935 is not one (only
#               https and loopback are), so without it the page cannot decode at all
#               ("VideoDecoder is not defined") and `transport=webtransport` quietly
#               plays HTTP-FLV. 0 shows exactly that.
#   NETLAB_*    passed to netlab.sh (NETLAB_NAME: namespace prefix [qrl])
#
# Shares run.sh's lock (WORK/.lock) and namespaces: never run next to run.sh.
# Output: OUT/results.{md,json}, OUT/runs/CASE/TRANSPORT/ (drive.json: every sample;
# meta.json; serve, publish and browser logs; metrics.txt; shot.png), OUT/env.txt.
# Re-run `bench/netlab/browser_analyze.py OUT` to recompute the tables.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
NETLAB=$HERE/netlab.sh

CASES=${CASES:-50:2 100:5 drop}
TRANSPORTS=${TRANSPORTS:-webtransport http-flv}
DURATION=${DURATION:-60}
JITTER=${JITTER:-5}
RATE=${RATE:-20}
DROP_RTT=${DROP_RTT:-50}
DROP_LOSS=${DROP_LOSS:-0}
DROP_RATE=${DROP_RATE:-2}
DROP_AT=${DROP_AT:-10}
DROP_FOR=${DROP_FOR:-20}
TCP_CC=${TCP_CC:-bbr}
QUIC_CC=${QUIC_CC:-bbr}
QUIC_REDUNDANCY=${QUIC_REDUNDANCY:-auto}
VBITRATE=${VBITRATE:-3M}
X264_PRESET=${X264_PRESET:-veryfast}
FPS=${FPS:-30}
CHROMIUM=${CHROMIUM:-chromium}
WORK=${WORK:-$ROOT/target/netlab}
OUT=${OUT:-$WORK/browser-$(date -u +%Y%m%d-%H%M%S)}
export NO_COLOR=1
export NETLAB_NAME=${NETLAB_NAME:-qrl}
SRV_NS=$NETLAB_NAME-srv
CLI_NS=$NETLAB_NAME-cli
SRV_IP=10.201.0.1
PORT=1935
STREAM=live/lab

die() { echo "browser.sh: $*" >&2; exit 1; }
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
now_ms() { date +%s%3N; }
sleep_until() {  # UNIX_MS
    local left; left=$(( $1 - $(now_ms) ))
    if [ "$left" -gt 0 ]; then sleep "$(awk -v l="$left" 'BEGIN { printf "%.3f", l / 1000 }')"; fi
}

if [ $# -gt 0 ]; then  # no arguments: everything is an environment variable
    sed -n '2,/^set -euo/p' "$0" | grep -v '^set ' | sed 's/^# \{0,1\}//'
    exit 2
fi
[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces)"
for t in $TRANSPORTS; do [[ "$t" =~ ^(webtransport|http-flv)$ ]] || die "unknown transport '$t'"; done
for c in $CASES; do
    [[ "$c" = drop || "$c" =~ ^[0-9]+:[0-9.]+$ ]] || die "bad case '$c' (want RTT_MS:LOSS_PCT or drop)"
done
for c in ip tc iptables python3 ffmpeg node curl "$CHROMIUM"; do
    command -v "$c" >/dev/null || die "$c is missing (apt-get install iproute2 iptables python3 ffmpeg nodejs curl chromium)"
done

if [ -z "${QRELAY:-}" ]; then
    QRELAY=$ROOT/target/release/qrelay
    (cd "$ROOT" && cargo build --release --locked)
fi
[ -x "$QRELAY" ] || die "no qrelay binary at $QRELAY"
mkdir -p "$WORK" "$OUT"
exec 9>"$WORK/.lock"
flock -n 9 || die "another lab run (run.sh or browser.sh) is using $WORK"
# Another checkout's lab uses the same namespace names: do not pull them from under it.
if ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$NETLAB_NAME-net" &&
    pgrep -f "nfq_netem.py" >/dev/null; then
    die "the $NETLAB_NAME lab is up with impairment daemons running (another lab run?)"
fi

PIDS=()
stop_pid() {  # PID SIGNAL: signal one process we started, then wait for it (bounded)
    local pid=$1 i
    kill -"$2" "$pid" 2>/dev/null || return 0
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
forget() { local p keep=(); for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done; PIDS=("${keep[@]}"); }
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid" INT; done
    "$NETLAB" down 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_server() {  # DIR
    ip netns exec "$SRV_NS" "$QRELAY" serve --listen "$SRV_IP:$PORT" --cert-dir "$WORK/certs" \
        --quic-congestion "$QUIC_CC" --quic-redundancy "$QUIC_REDUNDANCY" >"$1/serve.log" 2>&1 &
    SERVER=$!
    PIDS+=("$SERVER")
    local i
    for i in $(seq 1 100); do
        ip netns exec "$SRV_NS" ss -Hltn "sport = :$PORT" | grep -q . && return 0
        kill -0 "$SERVER" 2>/dev/null || break
        sleep 0.05
    done
    cat "$1/serve.log" >&2
    die "qrelay serve did not start"
}

# A live camera: encoded as it goes (-re), so its timestamps follow the wall clock.
start_publisher() {  # DIR
    ip netns exec "$SRV_NS" ffmpeg -nostdin -hide_banner -loglevel warning -stats -re \
        -f lavfi -i "testsrc=size=1280x720:rate=$FPS" \
        -f lavfi -i "sine=frequency=440:sample_rate=44100" \
        -map 0:v -map 1:a -c:v libx264 -preset "$X264_PRESET" -tune zerolatency -pix_fmt yuv420p \
        -g "$FPS" -keyint_min "$FPS" -sc_threshold 0 \
        -b:v "$VBITRATE" -minrate "$VBITRATE" -maxrate "$VBITRATE" -bufsize "$VBITRATE" -x264-params nal-hrd=cbr \
        -c:a aac -b:a 128k -ac 2 -ar 44100 \
        -f flv "rtmp://$SRV_IP:$PORT/$STREAM" >"$1/publish.log" 2>&1 &
    PUBLISHER=$!
    PIDS+=("$PUBLISHER")
}

wait_live() {  # DIR: the stream's FLV gives bytes next to the server (unimpaired)
    local i n
    for i in $(seq 1 40); do
        n=$(ip netns exec "$SRV_NS" curl -s -o /dev/null -m 1 -w '%{size_download}' \
            "http://$SRV_IP:$PORT/$STREAM.flv" 2>/dev/null || true)
        [ "${n:-0}" -gt 100000 ] 2>/dev/null && return 0
        kill -0 "$PUBLISHER" 2>/dev/null || break
        sleep 0.5
    done
    tail -5 "$1/publish.log" >&2
    die "the stream did not go live"
}

SECURE_FLAG=()
[ "${TREAT_SECURE:-1}" = 1 ] && SECURE_FLAG=(--flag "--unsafely-treat-insecure-origin-as-secure=http://$SRV_IP:$PORT")

# Run in the page before its own scripts: mirrors the element's live counters every
# 100 ms (its own attributes refresh once a second), and the wall clock for aligning
# samples with the link changes; logs each picture's latency (element.latencies, which
# holds the last 3000: runs up to 100 s) with the wall time it was seen, and hands that
# log over in the run's last 4 s. Reads only; the player is not changed.
poller() {  # DURATION_S
    cat <<JS
(() => { const pics = []; let seen = 0;
  setInterval(() => { const e = document.querySelector("qrelay-player");
    if (!e || !e.stats) return; const w = Date.now(), l = e.latencies || [];
    for (let i = seen; i < l.length; i++) pics.push(w + ":" + l[i]); seen = l.length;
    e.setAttribute("data-lab-decoded", String(e.stats.decoded));
    e.setAttribute("data-lab-state", e.state); e.setAttribute("data-lab-wall", String(w));
    if (performance.now() > ($1 - 4) * 1000) e.setAttribute("data-lab-pics", pics.join(","));
  }, 100); })();
JS
}

json_str() { python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; }
write_meta() {  # DIR then key=value... (values are JSON)
    local dir=$1; shift
    python3 -c 'import json, sys; print(json.dumps({k: json.loads(v) for k, v in (a.split("=", 1) for a in sys.argv[1:])}, indent=1))' \
        "$@" >"$dir/meta.json"
}

run_one() {  # CASE RTT LOSS TRANSPORT DROP(0|1)
    local case=$1 rtt=$2 loss=$3 transport=$4 drop=$5
    local dir=$OUT/runs/$case/$transport
    mkdir -p "$dir"
    log "$case $transport (${DURATION} s)"
    "$NETLAB" clear
    "$NETLAB" tcp-cc "$TCP_CC"
    start_server "$dir"
    start_publisher "$dir"
    wait_live "$dir"
    # Fresh impairment per run, after the publisher is live (its hop is not impaired
    # anyway): both transports see the same seeded loss and jitter sequence.
    "$NETLAB" impair "$(awk -v r="$rtt" 'BEGIN { print r / 2 }')" "$JITTER" "$loss" "$RATE" 2>/dev/null
    local home; home=$(mktemp -d "$WORK/chromium-home.XXXXXX")
    local load0; load0=$(cut -d' ' -f1 /proc/loadavg)
    local t0 drop_start=null drop_end=null
    t0=$(now_ms)
    ip netns exec "$CLI_NS" env HOME="$home" TMPDIR="$home" node "$ROOT/tests/browser/drive.mjs" \
        --url "http://$SRV_IP:$PORT/play/$STREAM?transport=$transport&muted=1" --seconds "$DURATION" \
        --chromium "$CHROMIUM" --screenshot "$dir/shot.png" --before-load "$(poller "$DURATION")" "${SECURE_FLAG[@]}" \
        >"$dir/drive.json" 2>"$dir/drive.err" &
    local browser=$!
    PIDS+=("$browser")
    if [ "$drop" = 1 ]; then
        sleep_until $((t0 + DROP_AT * 1000))
        "$NETLAB" rate "$DROP_RATE"
        drop_start=$(now_ms)
        sleep_until $((t0 + (DROP_AT + DROP_FOR) * 1000))
        "$NETLAB" rate "$RATE"
        drop_end=$(now_ms)
    fi
    local rc=0
    wait "$browser" || rc=$?
    forget "$browser"
    "$NETLAB" status >"$dir/netlab-status.txt" 2>&1 || true
    ip netns exec "$SRV_NS" curl -s -m 2 "http://127.0.0.1:8935/metrics" >"$dir/metrics.txt" 2>/dev/null || true
    local note=""
    kill -0 "$PUBLISHER" 2>/dev/null || note="publisher exited early"
    [ "$rc" -eq 0 ] || note="${note:+$note; }drive.mjs exited $rc: $(tail -3 "$dir/drive.err" | tr '\n' ' ')"
    [ -z "$note" ] || log "$note"
    stop_pid "$PUBLISHER" INT; forget "$PUBLISHER"
    stop_pid "$SERVER" INT; forget "$SERVER"
    rm -rf "$home"
    local speed; speed=$(tr '\r' '\n' <"$dir/publish.log" | grep -o 'speed=[ 0-9.]*x' | tail -1 | tr -d ' ' || true)
    write_meta "$dir" "case=\"$case\"" "transport=\"$transport\"" "rtt_ms=$rtt" "loss_pct=$loss" \
        "jitter_ms=$JITTER" "rate_mbit=$RATE" "tcp_cc=\"$TCP_CC\"" "quic_cc=\"$QUIC_CC\"" "quic_redundancy=\"$QUIC_REDUNDANCY\"" "fps=$FPS" \
        "duration_s=$DURATION" "drop_rate_mbit=$([ "$drop" = 1 ] && echo "$DROP_RATE" || echo null)" \
        "t0_unix_ms=$t0" "drop_start_unix_ms=$drop_start" "drop_end_unix_ms=$drop_end" \
        "load1_start=$load0" "load1_end=$(cut -d' ' -f1 /proc/loadavg)" \
        "publisher_speed=$(json_str "${speed#speed=}")" "note=$(json_str "$note")"
}

{
    echo "command: CASES=\"$CASES\" TRANSPORTS=\"$TRANSPORTS\" DURATION=$DURATION JITTER=$JITTER RATE=$RATE" \
        "DROP_RTT=$DROP_RTT DROP_LOSS=$DROP_LOSS DROP_RATE=$DROP_RATE DROP_AT=$DROP_AT DROP_FOR=$DROP_FOR" \
        "TCP_CC=$TCP_CC QUIC_CC=$QUIC_CC QUIC_REDUNDANCY=$QUIC_REDUNDANCY TREAT_SECURE=${TREAT_SECURE:-1} VBITRATE=$VBITRATE X264_PRESET=$X264_PRESET bench/netlab/browser.sh"
    echo "started: $(date -u +%FT%TZ)"
    echo "qrelay: $("$QRELAY" --version) ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo no git)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ", modified"))"
    echo "browser: $("$CHROMIUM" --version 2>/dev/null | head -1); node $(node --version); $(ffmpeg -version | head -1)"
    echo "kernel: $(uname -r); cpus: $(nproc); load: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "bottleneck queue: ${NETLAB_QUEUE_MS:-50} ms at the link rate"
} >"$OUT/env.txt"
cat "$OUT/env.txt" >&2

"$NETLAB" down 2>/dev/null || true
"$NETLAB" up 2>/dev/null
for c in $CASES; do
    if [ "$c" = drop ]; then
        for t in $TRANSPORTS; do run_one drop "$DROP_RTT" "$DROP_LOSS" "$t" 1; done
    else
        for t in $TRANSPORTS; do run_one "rtt${c%%:*}-loss${c#*:}" "${c%%:*}" "${c#*:}" "$t" 0; done
    fi
done
echo "finished: $(date -u +%FT%TZ); load: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/env.txt"
python3 "$HERE/browser_analyze.py" "$OUT"
log "results in $OUT"
