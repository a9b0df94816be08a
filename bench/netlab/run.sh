#!/usr/bin/env bash
# run.sh - qrelay's impairment benchmark: how late does live video arrive over a bad link?
#
# `qrelay publish --loop` of a 3 Mbit/s 720p30 FLV (GOP 2 s, AAC) in the client
# namespace pushes through an impaired link (netlab.sh) to `qrelay serve` in the server
# namespace; `qrelay play --arrivals` next to the server (no impairment) logs when each
# video frame arrives. analyze.py turns the logs into frames delivered, lateness p50/p99
# and stalls per case and transport (definitions in analyze.py).
#
# Usage (root; installs iproute2, iptables, python3 and ffmpeg with apt-get if missing):
#   bench/netlab/run.sh                                  the full matrix (~13 cases x 5)
#   CASES="50:0 50:2 100:5 drop" DURATION=40 TRANSPORTS="tcp-bbr tunnel-bbr" bench/netlab/run.sh
#
# Environment (defaults in brackets):
#   CASES       RTT_MS:LOSS_PCT entries and/or `drop` [every RTT in {50,100,200} x loss in
#               {0,0.5,2,5}, then drop]
#   TRANSPORTS  [tcp-bbr tcp-cubic tunnel-bbr tunnel-cubic roqr]
#                 tcp-X      rtmp:// with TCP congestion control X for the publisher
#                 tunnel-X   rtmp+quic://...?mode=tunnel with --quic-congestion X (both ends)
#                 roqr       rtmp+quic://...?mode=roqr with --quic-congestion $ROQR_CC [bbr]
#               A transport the binary refuses (a preflight publish fails) is reported as
#               skipped with the error, not run.
#   SIDE        which side of the impaired link the measured transport is on [publish]:
#                 publish    the publisher sits behind the link (ingest), the player next
#                            to the server over plain RTMP
#                 play       the player sits behind the link and plays over the transport
#                            (a viewer or an edge on a bad network), the publisher next to
#                            the server over plain RTMP; tcp-X is then the server's TCP
#                            congestion control towards the player
#   DURATION    seconds per run [40]; SKIP: seconds not measured at the start [6]
#   JITTER      ms, each direction [5]; RATE: link Mbit/s, each direction [20]
#   DROP_RTT, DROP_LOSS   path of the `drop` case [50, 0]
#   DROP_RATE, DROP_AT, DROP_FOR   the link falls to DROP_RATE Mbit/s [2] DROP_AT s [10] into
#               the run for DROP_FOR s [20]; that run lasts at least DROP_AT+DROP_FOR+10 s
#   WORK        media, certificates and results [target/netlab]; OUT: results [WORK/results-DATE]
#   QRELAY      binary [target/release/qrelay, built with cargo build --release --locked]
#   FPS         frame rate of the media, for the expected frame count [30]
#   NETLAB_*    passed to netlab.sh (NETLAB_NAME: namespace prefix [qrl])
#
# Output: OUT/results.md (Markdown), OUT/results.{json,csv} (raw), OUT/runs/CASE/TRANSPORT/
# (arrivals.tsv, meta.json and the three processes' logs), OUT/env.txt (machine and
# command). Re-run `bench/netlab/analyze.py OUT` to recompute the tables.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
NETLAB=$HERE/netlab.sh

DEFAULT_CASES=""
for rtt in 50 100 200; do for loss in 0 0.5 2 5; do DEFAULT_CASES+="$rtt:$loss "; done; done
CASES=${CASES:-${DEFAULT_CASES}drop}
TRANSPORTS=${TRANSPORTS:-tcp-bbr tcp-cubic tunnel-bbr tunnel-cubic roqr}
DURATION=${DURATION:-40}
SIDE=${SIDE:-publish}
SKIP=${SKIP:-6}
JITTER=${JITTER:-5}
RATE=${RATE:-20}
DROP_RTT=${DROP_RTT:-50}
DROP_LOSS=${DROP_LOSS:-0}
DROP_RATE=${DROP_RATE:-2}
DROP_AT=${DROP_AT:-10}
DROP_FOR=${DROP_FOR:-20}
ROQR_CC=${ROQR_CC:-bbr}
FPS=${FPS:-30}
WORK=${WORK:-$ROOT/target/netlab}
OUT=${OUT:-$WORK/results-$(date -u +%Y%m%d-%H%M%S)}
export NO_COLOR=1
export NETLAB_NAME=${NETLAB_NAME:-qrl}
SRV_NS=$NETLAB_NAME-srv
CLI_NS=$NETLAB_NAME-cli
SRV_IP=10.201.0.1
PORT=1935

die() { echo "run.sh: $*" >&2; exit 1; }
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
[[ "$SIDE" =~ ^(publish|play)$ ]] || die "SIDE is publish or play, not '$SIDE'"
for t in $TRANSPORTS; do
    [[ "$t" =~ ^(tcp-[a-z0-9]+|tunnel-(bbr|cubic|newreno)|roqr)$ ]] || die "unknown transport '$t'"
done
for c in $CASES; do
    [[ "$c" = drop || "$c" =~ ^[0-9]+:[0-9.]+$ ]] || die "bad case '$c' (want RTT_MS:LOSS_PCT or drop)"
done

install_deps() {
    local missing=0 c
    for c in ip tc iptables python3 ffmpeg; do command -v "$c" >/dev/null || missing=1; done
    [ "$missing" -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "install iproute2, iptables, python3 and ffmpeg"
    log "installing iproute2 iptables python3 ffmpeg"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 iptables python3 ffmpeg >/dev/null
}

# 30 s of 1280x720 at 30 fps, H.264 CBR 3 Mbit/s without B-frames, GOP 2 s, AAC 128k:
# a typical live ingest. Looped by the publisher, timestamps continuing.
make_media() {
    MEDIA=$WORK/media/lab720p30.flv
    [ -s "$MEDIA" ] && return 0
    mkdir -p "$WORK/media"
    log "encoding $MEDIA (once)"
    ffmpeg -nostdin -hide_banner -loglevel error -y \
        -f lavfi -i "testsrc2=size=1280x720:rate=30,format=yuv420p" \
        -f lavfi -i "sine=frequency=1000:sample_rate=44100" \
        -t 30 -map 0:v -map 1:a \
        -c:v libx264 -profile:v high -g 60 -keyint_min 60 -sc_threshold 0 \
        -b:v 3M -minrate 3M -maxrate 3M -bufsize 3M -preset veryfast -tune zerolatency \
        -x264-params nal-hrd=cbr -c:a aac -b:a 128k -ac 2 -ar 44100 -f flv "$MEDIA.tmp"
    mv "$MEDIA.tmp" "$MEDIA"
}

PIDS=()
stop_pid() {  # PID SIGNAL: signal one process we started, then wait for it (bounded)
    local pid=$1 i
    kill -"$2" "$pid" 2>/dev/null || return 0
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid" INT; done
    "$NETLAB" down 2>/dev/null || true
}

url_of() {  # TRANSPORT
    case $1 in
        tcp-*) echo "rtmp://$SRV_IP:$PORT/live/lab" ;;
        tunnel-*) echo "rtmp+quic://$SRV_IP:$PORT/live/lab?mode=tunnel" ;;
        roqr) echo "rtmp+quic://$SRV_IP:$PORT/live/lab?mode=roqr" ;;
        *) die "unknown transport $1" ;;
    esac
}
quic_cc_of() { case $1 in tunnel-*) echo "${1#tunnel-}" ;; roqr) echo "$ROQR_CC" ;; *) echo bbr ;; esac; }
tcp_cc_of() { case $1 in tcp-*) echo "${1#tcp-}" ;; *) echo bbr ;; esac; }

start_server() {  # DIR QUIC_CC
    ip netns exec "$SRV_NS" "$QRELAY" serve --listen "$SRV_IP:$PORT" --cert-dir "$WORK/certs" \
        --quic-congestion "$2" >"$1/serve.log" 2>&1 &
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

start_publisher() {  # DIR TRANSPORT
    # --insecure: the development certificate names localhost, not the lab address, and
    # certificate checks are not what this measures.
    if [ "$SIDE" = play ]; then  # next to the server; the player is the one measured
        ip netns exec "$SRV_NS" "$QRELAY" publish --loop "$MEDIA" "rtmp://$SRV_IP:$PORT/live/lab" \
            >"$1/publish.log" 2>&1 &
    else
        ip netns exec "$CLI_NS" "$QRELAY" publish --loop "$MEDIA" "$(url_of "$2")" --insecure \
            --quic-congestion "$(quic_cc_of "$2")" >"$1/publish.log" 2>&1 &
    fi
    PUBLISHER=$!
    PIDS+=("$PUBLISHER")
}

forget() { local p keep=(); for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done; PIDS=("${keep[@]}"); }

# A short publish over the unimpaired link: a transport this build refuses (RoQR before
# it lands: "not implemented yet") is reported as skipped instead of failing every case.
preflight() {  # TRANSPORT -> sets REASON to why it cannot run, empty if it can
    local dir=$OUT/preflight/$1
    REASON=""
    mkdir -p "$dir"
    "$NETLAB" clear
    "$NETLAB" tcp-cc "$(tcp_cc_of "$1")"
    start_server "$dir" "$(quic_cc_of "$1")"
    start_publisher "$dir" "$1"
    sleep 3
    if ! kill -0 "$PUBLISHER" 2>/dev/null; then
        REASON=$(last_line "$dir/publish.log")
        [ -n "$REASON" ] || REASON="the publisher exited"
    fi
    stop_pid "$PUBLISHER" INT; forget "$PUBLISHER"
    stop_pid "$SERVER" INT; forget "$SERVER"
}

last_line() { grep -v '^[[:space:]]*$' "$1" | tail -1 | sed 's/\x1b\[[0-9;]*m//g; s/|/\\|/g' || true; }
json_str() { python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; }

write_meta() {  # DIR then key=value... (numbers as is, strings quoted by the caller)
    local dir=$1; shift
    python3 -c 'import json, sys; print(json.dumps({k: json.loads(v) for k, v in (a.split("=", 1) for a in sys.argv[1:])}, indent=1))' \
        "$@" >"$dir/meta.json"
}

run_one() {  # CASE RTT LOSS TRANSPORT DROP(0|1)
    local case=$1 rtt=$2 loss=$3 transport=$4 drop=$5
    local dir=$OUT/runs/$case/$transport duration=$DURATION
    mkdir -p "$dir"
    local common=("case=\"$case\"" "transport=\"$transport\"" "rtt_ms=$rtt" "loss_pct=$loss" "jitter_ms=$JITTER"
        "rate_mbit=$RATE" "tcp_cc=\"$(tcp_cc_of "$transport")\"" "quic_cc=\"$(quic_cc_of "$transport")\""
        "skip_s=$SKIP" "fps=$FPS" "side=\"$SIDE\"")
    if [ "$drop" = 1 ]; then
        [ "$duration" -ge $((DROP_AT + DROP_FOR + 10)) ] || duration=$((DROP_AT + DROP_FOR + 10))
        common+=("drop_rate_mbit=$DROP_RATE" "drop_at_s=$DROP_AT" "drop_for_s=$DROP_FOR")
    fi
    common+=("duration_s=$duration")
    if [ -n "${SKIPPED[$transport]:-}" ]; then
        write_meta "$dir" "${common[@]}" "skipped=true" "note=$(json_str "${SKIPPED[$transport]}")"
        return 0
    fi
    log "$case $transport (${duration} s)"
    # Fresh impairment per run: every transport sees the same seeded loss/jitter sequence.
    "$NETLAB" impair "$(awk -v r="$rtt" 'BEGIN { print r / 2 }')" "$JITTER" "$loss" "$RATE" 2>/dev/null
    "$NETLAB" tcp-cc "$(tcp_cc_of "$transport")"
    start_server "$dir" "$(quic_cc_of "$transport")"
    # The player stops itself (and so writes out its log) ~1.5 s after the measured
    # window, while the publisher still runs.
    if [ "$SIDE" = play ]; then
        ip netns exec "$CLI_NS" "$QRELAY" play "$(url_of "$transport")" --insecure \
            --quic-congestion "$(quic_cc_of "$transport")" -o /dev/null \
            --arrivals "$dir/arrivals.tsv" --duration $((duration + 2)) >"$dir/play.log" 2>&1 &
    else
        ip netns exec "$SRV_NS" "$QRELAY" play "rtmp://$SRV_IP:$PORT/live/lab" -o /dev/null \
            --arrivals "$dir/arrivals.tsv" --duration $((duration + 2)) >"$dir/play.log" 2>&1 &
    fi
    local player=$!
    PIDS+=("$player")
    sleep 0.5
    local t0 drop_start=null drop_end=null note=""
    t0=$(now_ms)
    start_publisher "$dir" "$transport"
    if [ "$drop" = 1 ]; then
        sleep_until $((t0 + DROP_AT * 1000))
        "$NETLAB" rate "$DROP_RATE"
        drop_start=$(now_ms)
        sleep_until $((t0 + (DROP_AT + DROP_FOR) * 1000))
        "$NETLAB" rate "$RATE"
        drop_end=$(now_ms)
    fi
    sleep_until $((t0 + duration * 1000))
    if ! kill -0 "$PUBLISHER" 2>/dev/null; then
        note="publisher exited early: $(last_line "$dir/publish.log")"
        log "$note"
    fi
    local i
    for i in $(seq 1 100); do kill -0 "$player" 2>/dev/null || break; sleep 0.1; done
    stop_pid "$player" INT; forget "$player"
    stop_pid "$PUBLISHER" INT; forget "$PUBLISHER"
    stop_pid "$SERVER" INT; forget "$SERVER"
    "$NETLAB" status >"$dir/netlab-status.txt" 2>&1 || true
    write_meta "$dir" "${common[@]}" "load1=$(cut -d" " -f1 /proc/loadavg)" "t0_unix_ms=$t0" "drop_start_unix_ms=$drop_start" \
        "drop_end_unix_ms=$drop_end" "note=$(json_str "$note")"
}

install_deps
if [ -z "${QRELAY:-}" ]; then
    QRELAY=$ROOT/target/release/qrelay
    (cd "$ROOT" && cargo build --release --locked)
fi
[ -x "$QRELAY" ] || die "no qrelay binary at $QRELAY"
mkdir -p "$WORK" "$OUT"
exec 9>"$WORK/.lock"
flock -n 9 || die "another run.sh is using $WORK"
make_media
trap cleanup EXIT
trap 'exit 130' INT TERM

{
    echo "command: SIDE=$SIDE CASES=\"$CASES\" TRANSPORTS=\"$TRANSPORTS\" DURATION=$DURATION SKIP=$SKIP JITTER=$JITTER RATE=$RATE" \
        "DROP_RTT=$DROP_RTT DROP_LOSS=$DROP_LOSS DROP_RATE=$DROP_RATE DROP_AT=$DROP_AT DROP_FOR=$DROP_FOR bench/netlab/run.sh"
    echo "started: $(date -u +%FT%TZ)"
    echo "qrelay: $("$QRELAY" --version) ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo no git)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ", modified"))"
    echo "kernel: $(uname -r); cpus: $(nproc); load: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
} >"$OUT/env.txt"
cat "$OUT/env.txt" >&2

"$NETLAB" down 2>/dev/null || true
"$NETLAB" up 2>/dev/null
declare -A SKIPPED=()
for t in $TRANSPORTS; do
    preflight "$t"
    if [ -n "$REASON" ]; then
        SKIPPED[$t]=$REASON
        log "$t skipped: $REASON"
    fi
done

for c in $CASES; do
    if [ "$c" = drop ]; then
        for t in $TRANSPORTS; do run_one drop "$DROP_RTT" "$DROP_LOSS" "$t" 1; done
    else
        for t in $TRANSPORTS; do run_one "rtt${c%%:*}-loss${c#*:}" "${c%%:*}" "${c#*:}" "$t" 0; done
    fi
done
echo "finished: $(date -u +%FT%TZ); load: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/env.txt"
python3 "$HERE/analyze.py" "$OUT"
log "results in $OUT"
