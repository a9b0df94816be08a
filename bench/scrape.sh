#!/usr/bin/env bash
# What a Prometheus scrape costs the media path: `qrelay bench` (1 stream x PLAYERS
# players over TCP, synthetic 3 Mbit/s) against a fresh release qrelay, with and without
# a loop fetching /metrics every SCRAPE_MS, REPS times in turn (A B A B ...). Prints the
# relay latency percentiles of each run and the medians' ratios (scraped / quiet).
#
#   bench/scrape.sh                                # defaults below
#   PLAYERS=300 DURATION=20 REPS=3 bench/scrape.sh
#
# Environment: PLAYERS (300), DURATION (s, 20), REPS (3), SCRAPE_MS (100),
# QRELAY_PORT (19360), HTTP_PORT (19361), QRELAY_BIN (default: target/release/qrelay,
# built if missing), OUT (results dir, default a temp dir).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PLAYERS=${PLAYERS:-300}
DURATION=${DURATION:-20}
REPS=${REPS:-3}
SCRAPE_MS=${SCRAPE_MS:-100}
QPORT=${QRELAY_PORT:-19360}
HPORT=${HTTP_PORT:-19361}
OUT=${OUT:-$(mktemp -d /tmp/qrelay-scrape.XXXXXX)}
QRELAY=${QRELAY_BIN:-$ROOT/target/release/qrelay}
[[ -x $QRELAY ]] || cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
mkdir -p "$OUT"

run() { # run NAME SCRAPE(0/1)
    local name=$1 scrape=$2 server scraper=""
    "$QRELAY" serve --listen "127.0.0.1:$QPORT" --http "127.0.0.1:$HPORT" \
        --cert-dir "$OUT/certs" >"$OUT/$name.serve.log" 2>&1 &
    server=$!
    for _ in $(seq 100); do
        curl -fs -o /dev/null "http://127.0.0.1:$HPORT/metrics" && break
        sleep 0.05
    done
    if [[ $scrape == 1 ]]; then
        # Bounded: at most the bench's length plus its ramp, at SCRAPE_MS apart.
        local n=$(( (DURATION + 30) * 1000 / SCRAPE_MS ))
        ( for _ in $(seq "$n"); do
              curl -fs -o /dev/null "http://127.0.0.1:$HPORT/metrics" || true
              sleep "$(awk "BEGIN{print $SCRAPE_MS/1000}")"
          done ) &
        scraper=$!
    fi
    "$QRELAY" bench --url "rtmp://127.0.0.1:$QPORT/live/scrape" --players "$PLAYERS" \
        --duration "$DURATION" --server-pid "$server" --quiet --json "$OUT/$name.json" >"$OUT/$name.txt"
    [[ -z $scraper ]] || kill "$scraper" 2>/dev/null || true
    kill -INT "$server"
    wait "$server" 2>/dev/null || true
    [[ -z $scraper ]] || wait "$scraper" 2>/dev/null || true
}

for rep in $(seq "$REPS"); do
    run "quiet-$rep" 0
    run "scraped-$rep" 1
done

python3 - "$OUT" "$REPS" "$PLAYERS" "$SCRAPE_MS" <<'EOF'
import json, statistics, sys
out, reps, players, scrape_ms = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def load(name):
    r = json.load(open(f"{out}/{name}.json"))
    lat = r["relay_latency_ms"]
    return lat["p50"], lat["p99"], r.get("cpu_s_per_gbit")
rows = {k: [load(f"{k}-{i}") for i in range(1, reps + 1)] for k in ("quiet", "scraped")}
print(f"1 stream x {players} players, /metrics every {scrape_ms} ms in the scraped runs")
for k, runs in rows.items():
    for i, (p50, p99, cpu) in enumerate(runs, 1):
        print(f"  {k:8} run {i}: relay latency p50 {p50:.2f} ms  p99 {p99:.2f} ms  server CPU s/Gbit {cpu}")
med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for k, v in rows.items()}
print(f"  median quiet   p50 {med['quiet'][0]:.2f} ms  p99 {med['quiet'][1]:.2f} ms")
print(f"  median scraped p50 {med['scraped'][0]:.2f} ms  p99 {med['scraped'][1]:.2f} ms")
print(f"  ratio scraped/quiet: p50 {med['scraped'][0]/med['quiet'][0]:.2f}  p99 {med['scraped'][1]/med['quiet'][1]:.2f}")
EOF
echo "results in $OUT"
