#!/usr/bin/env bash
# Churn scenario: steady TCP players while others join and leave continuously.
#
#   bench/churn.sh                                 # 300 steady, 50 joins/s, 3 reps
#   BASE_BIN=/path/to/old/qrelay bench/churn.sh    # also the same runs against another build
#
# For each repetition, in turn: a fresh `qrelay serve` measured without churn, then with
# `--churn-rate RATE` (players that join, play for HOLD_MS and close, on top of the
# steady ones); with BASE_BIN the same two runs against that binary follow. Every run is
# measured by this checkout's `qrelay bench`; latency and skips are the steady players'
# only. Prints one row per run and the medians, p99 with churn / p99 without.
#
# Environment: PLAYERS (300), RATE (50), HOLD_MS (1000), DURATION (s, 10), REPS (3),
# BITRATE (3M), AUDIO (1: synthetic AAC beside the video; 0: video only), PORT (19360), QRELAY_BIN (default: build release), BASE_BIN (optional),
# OUT (results dir, default a temp dir).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PLAYERS=${PLAYERS:-300}
RATE=${RATE:-50}
HOLD_MS=${HOLD_MS:-1000}
DURATION=${DURATION:-10}
REPS=${REPS:-3}
BITRATE=${BITRATE:-3M}
AUDIO=${AUDIO:-1}
AUDIO_ARGS=()
[[ $AUDIO == 0 ]] && AUDIO_ARGS=(--no-audio)
PORT=${PORT:-19360}
WORK=$(mktemp -d /tmp/qrelay-churn.XXXXXX)
OUT=${OUT:-$WORK/results}
mkdir -p "$OUT"

if [[ -n "${QRELAY_BIN:-}" ]]; then
    cp "$QRELAY_BIN" "$WORK/qrelay"
else
    cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
    cp "$ROOT/target/release/qrelay" "$WORK/qrelay"
fi
QRELAY="$WORK/qrelay"
BUILDS=(new)
if [[ -n "${BASE_BIN:-}" ]]; then
    cp "$BASE_BIN" "$WORK/qrelay-base"
    BUILDS+=(base)
fi

SERVER_PID=""
stop_server() {
    if [[ -n "$SERVER_PID" ]]; then
        kill -INT "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
trap 'stop_server' EXIT

wait_port() {
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "nothing listening on $PORT" >&2
    return 1
}

# run_one BUILD RATE REP
run_one() {
    local build=$1 rate=$2 rep=$3 bin="$QRELAY"
    [[ $build == new ]] || bin="$WORK/qrelay-base"
    RUST_LOG=error "$bin" serve --listen "127.0.0.1:$PORT" --cert-dir "$WORK/certs" >>"$WORK/serve.log" 2>&1 &
    SERVER_PID=$!
    wait_port
    printf '== %s, churn %s/s, rep %s\n' "$build" "$rate" "$rep" >&2
    "$QRELAY" bench --url "rtmp://127.0.0.1:$PORT/live/c" --players "$PLAYERS" --duration "$DURATION" \
        --bitrate "$BITRATE" "${AUDIO_ARGS[@]}" --churn-rate "$rate" --churn-hold-ms "$HOLD_MS" --quiet \
        --server-pid "$SERVER_PID" --json "$OUT/$build.churn$rate.$rep.json" >/dev/null \
        || echo "bench failed: $build churn $rate rep $rep" >&2
    stop_server
    sleep 1
}

for rep in $(seq "$REPS"); do
    for build in "${BUILDS[@]}"; do
        run_one "$build" 0 "$rep"
        run_one "$build" "$RATE" "$rep"
    done
done

python3 - "$OUT" "$RATE" "$PLAYERS" "$HOLD_MS" <<'PY'
import glob, json, os, statistics, sys

out, rate, players, hold = sys.argv[1:5]
print(f"Steady players: {players}; churn: {rate}/s joining, each for {hold} ms.\n")
print("| build | churn/s | rep | steady ok | p50 ms | p99 ms | max ms | skips | max gap ms "
      "| churn joined / played / failed | server CPU s/Gbit (steady bytes) |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
med = {}
for build in ("new", "base"):
    for r in ("0", rate):
        files = sorted(glob.glob(os.path.join(out, f"{build}.churn{r}.*.json")))
        if not files:
            continue
        p99s = []
        for f in files:
            j = json.load(open(f))
            lat = j.get("relay_latency_ms") or {}
            rep = f.rsplit(".", 2)[1]
            churn = "-" if j.get("churn_joined") is None else \
                f"{j['churn_joined']} / {j['churn_played']} / {j['churn_failed']}"
            gbit = j.get("cpu_s_per_gbit")
            print(f"| {build} | {r} | {rep} | {j['players_ok']}/{j['players_total']} "
                  f"| {lat.get('p50', 0):.2f} | {lat.get('p99', 0):.2f} | {lat.get('max', 0):.1f} "
                  f"| {j['skips']} | {j['max_gap_ms']:.0f} | {churn} "
                  f"| {'-' if gbit is None else f'{gbit:.3f}'} |")
            p99s.append(lat.get("p99", 0))
        med[(build, r)] = statistics.median(p99s)
print()
for build in ("new", "base"):
    if (build, "0") in med and (build, rate) in med and med[(build, "0")] > 0:
        a, b = med[(build, rate)], med[(build, "0")]
        print(f"{build}: median p99 {b:.2f} ms without churn, {a:.2f} ms with: ratio {a / b:.2f}")
PY
echo "raw JSON in $OUT" >&2
