#!/usr/bin/env bash
# Runs one `qrelay bench` load against several qrelay configurations in turn (A B C A B C
# ...), each a fresh server, and prints CPU per delivered Gbit and relay latency per
# configuration (medians over the repetitions). For settings that compare.sh does not
# vary: write coalescing, chunk size, runtime workers.
#
#   bench/variants.sh "default:" "off:write_coalesce_ms = 0" "w350:write_coalesce_ms = 350\nwrite_coalesce_bytes = 16777216"
#
# Each argument is NAME:TOML (lines separated by \n); NAME may carry environment for the
# server only, as NAME@VAR=VALUE (e.g. "one-worker@TOKIO_WORKER_THREADS=1:").
# Environment: QRELAY_BIN (default target/release/qrelay), PLAYERS (300), DURATION (12),
# REPS (2), BITRATE (3M), QRELAY_PORT (19352).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${QRELAY_BIN:-$ROOT/target/release/qrelay}
PLAYERS=${PLAYERS:-300}
DURATION=${DURATION:-12}
REPS=${REPS:-2}
BITRATE=${BITRATE:-3M}
PORT=${QRELAY_PORT:-19352}
WORK=$(mktemp -d /tmp/qrelay-variants.XXXXXX)
cp "$BIN" "$WORK/qrelay"
SERVER_PID=""
trap '[[ -z $SERVER_PID ]] || kill -INT $SERVER_PID 2>/dev/null; rm -rf "$WORK/certs"' EXIT

for rep in $(seq "$REPS"); do
    for spec in "$@"; do
        name=${spec%%:*}
        toml=${spec#*:}
        label=${name%%@*}
        envs=()
        [[ $name != *@* ]] || envs=("${name#*@}")
        printf '%b\n' "$toml" >"$WORK/$label.toml"
        env "${envs[@]}" RUST_LOG=error "$WORK/qrelay" serve --listen "127.0.0.1:$PORT" --cert-dir "$WORK/certs" \
            --config "$WORK/$label.toml" >>"$WORK/serve.log" 2>&1 &
        SERVER_PID=$!
        for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.05; done
        printf '== %s, rep %s\n' "$label" "$rep" >&2
        "$WORK/qrelay" bench --url "rtmp://127.0.0.1:$PORT/live/b" --players "$PLAYERS" --duration "$DURATION" \
            --bitrate "$BITRATE" --quiet --json "$WORK/$label.$rep.json" --server-pid "$SERVER_PID" >&2 \
            || echo "bench failed for $label" >&2
        kill -INT "$SERVER_PID"
        wait "$SERVER_PID" || true
        SERVER_PID=""
        sleep 1
    done
done

python3 - "$WORK" "$PLAYERS" "$@" <<'PY'
import glob, json, os, statistics, sys
work, players, specs = sys.argv[1], sys.argv[2], sys.argv[3:]
print(f"| configuration (1 x {players} A/V) | players ok | CPU s/Gbit | latency p50 / p99 ms | relative CPU |")
print("|---|---|---|---|---|")
first = None
for spec in specs:
    name, toml = spec.split(":", 1)
    label = name.split("@")[0]
    runs = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(work, f"{label}.*.json")))]
    med = lambda k, sub=None: statistics.median([(r[k][sub] if sub else r[k]) for r in runs if r.get(k) is not None])
    gbit = med("cpu_s_per_gbit")
    first = first or gbit
    desc = toml.replace("\\n", ", ") or "defaults"
    if "@" in name:
        desc += f" ({name.split('@', 1)[1]})"
    print(f"| {label}: {desc} | {med('players_ok'):.0f}/{players} | {gbit:.3f} "
          f"| {med('relay_latency_ms', 'p50'):.2f} / {med('relay_latency_ms', 'p99'):.2f} | {gbit / first:.2f} |")
PY
