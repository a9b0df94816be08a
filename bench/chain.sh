#!/usr/bin/env bash
# A relay chain on loopback: origin <- mid <- edge, each a `qrelay serve` pulling from
# the one before over QUIC (`--origin rtmp+quic://...`).
#
#   bench/chain.sh
#
# Runs, each with `qrelay bench` publishing synthetic A/V to the origin:
#   direct  players on the origin itself (the baseline latency)
#   1 hop   players on mid (which pulls from the origin), for each count in PLAYER_COUNTS:
#           the origin's CPU must not grow with the players (it feeds one upstream)
#   2 hops  players on the edge (edge <- mid <- origin)
# Prints one row per run: players, the origin's CPU (and the pulling node's), relay latency
# p50/p99 (publish to play, through every hop), and the latency each hop adds over direct.
#
# Environment: PLAYER_COUNTS ("10 100 300"), DURATION (s, 10), BITRATE (3M), PORT (first
# of three, 19370), QRELAY_BIN (default: build release), OUT (results dir).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PLAYER_COUNTS=${PLAYER_COUNTS:-"10 100 300"}
DURATION=${DURATION:-10}
BITRATE=${BITRATE:-3M}
PORT=${PORT:-19370}
WORK=$(mktemp -d /tmp/qrelay-chain.XXXXXX)
OUT=${OUT:-$WORK/results}
mkdir -p "$OUT"

if [[ -n "${QRELAY_BIN:-}" ]]; then
    cp "$QRELAY_BIN" "$WORK/qrelay"
else
    cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" -p qrelay
    cp "$ROOT/target/release/qrelay" "$WORK/qrelay"
fi
Q="$WORK/qrelay"
ORIGIN=$PORT MID=$((PORT + 1)) EDGE=$((PORT + 2))
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "nothing listening on $1" >&2
    return 1
}

# serve PORT [ARGS...]: one node, sharing the development CA with the others.
serve() {
    local port=$1
    shift
    RUST_LOG=warn "$Q" serve --listen "127.0.0.1:$port" --cert-dir "$WORK/certs" --pull-idle-ms 500 "$@" \
        >>"$WORK/serve-$port.log" 2>&1 &
    PIDS+=($!)
    wait_port "$port"
}
serve "$ORIGIN"
ORIGIN_PID=${PIDS[0]}
serve "$MID" --origin "rtmp+quic://127.0.0.1:$ORIGIN" --relay-ca "$WORK/certs/dev-ca.pem"
MID_PID=${PIDS[1]}
serve "$EDGE" --origin "rtmp+quic://127.0.0.1:$MID" --relay-ca "$WORK/certs/dev-ca.pem"
EDGE_PID=${PIDS[2]}

# run NAME PLAYERS PLAY_PORT PULLING_PID: publishes to the origin, plays at PLAY_PORT.
run() {
    local name=$1 players=$2 play=$3 pulling=$4 key="k$RANDOM"
    printf '== %s, %s players\n' "$name" "$players" >&2
    "$Q" bench --url "rtmp://127.0.0.1:$ORIGIN/live/$key" --play-url "rtmp://127.0.0.1:$play/live/$key" \
        --players "$players" --duration "$DURATION" --bitrate "$BITRATE" --quiet \
        --server-pid "$ORIGIN_PID" --json "$OUT/$name.$players.origin.json" >/dev/null &
    local bench=$!
    # The pulling node's CPU over the same window, from /proc (utime + stime, in ticks).
    local t0 c0
    t0=$(date +%s.%N)
    c0=$(awk '{print $14 + $15}' "/proc/$pulling/stat")
    wait "$bench" || echo "bench failed: $name $players" >&2
    local c1 t1
    c1=$(awk '{print $14 + $15}' "/proc/$pulling/stat")
    t1=$(date +%s.%N)
    python3 - "$c0" "$c1" "$t0" "$t1" "$(getconf CLK_TCK)" >"$OUT/$name.$players.pulling.txt" <<'EOF'
import sys
c0, c1, t0, t1, hz = map(float, sys.argv[1:])
print(f"{(c1 - c0) / hz / (t1 - t0) * 100:.1f}")
EOF
    sleep 1
}

run direct 10 "$ORIGIN" "$ORIGIN_PID"
for n in $PLAYER_COUNTS; do
    run 1hop "$n" "$MID" "$MID_PID"
done
run 2hops 10 "$EDGE" "$EDGE_PID"

python3 - "$OUT" <<'EOF'
import json, sys, glob, os
out = sys.argv[1]
rows = []
for path in sorted(glob.glob(os.path.join(out, "*.origin.json"))):
    name, players = os.path.basename(path).split(".")[:2]
    r = json.load(open(path))
    pulling = open(path.replace(".origin.json", ".pulling.txt")).read().strip()
    lat = r.get("relay_latency_ms") or {}
    srv = {"cpu_pct": r.get("server_cpu_pct")}
    rows.append((name, int(players), srv.get("cpu_pct"), pulling, lat.get("p50"), lat.get("p99"),
                 r.get("players_ok"), r.get("skips")))
order = {"direct": 0, "1hop": 1, "2hops": 2}
rows.sort(key=lambda r: (order.get(r[0], 9), r[1]))
base = next((r for r in rows if r[0] == "direct"), None)
print("| run | players | origin CPU % | pulling node CPU % | latency p50 / p99 ms | added per hop p50 / p99 ms | players ok | skips |")
print("|---|---|---|---|---|---|---|---|")
for name, n, cpu, pulling, p50, p99, ok, skips in rows:
    hops = order.get(name, 0)
    added = "-"
    if base and hops and p50 is not None and base[4] is not None:
        added = f"{(p50 - base[4]) / hops:.2f} / {(p99 - base[5]) / hops:.2f}"
    pull = "-" if name == "direct" else pulling
    cpu = f"{cpu:.1f}" if cpu is not None else "?"
    lat = f"{p50:.2f} / {p99:.2f}" if p50 is not None else "?"
    print(f"| {name} | {n} | {cpu} | {pull} | {lat} | {added} | {ok}/{n} | {skips} |")
EOF
echo "raw results: $OUT" >&2
