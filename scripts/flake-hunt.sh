#!/usr/bin/env bash
# Runs the whole test suite N times in a row (default 10) with one core kept busy by a
# CPU hog, as a loaded CI machine would be, and prints every failure with its test name.
# Exits non-zero if any run failed. Logs: target/flake-hunt/run-K.log.
#
#   ./scripts/flake-hunt.sh 10
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10}"
logs=target/flake-hunt
mkdir -p "$logs"

./scripts/install-test-deps.sh >/dev/null
# Build once; every run reuses the binaries.
cargo test --workspace --all-targets --locked --no-run

# The hog: one busy process, at normal priority, for the whole hunt.
( while :; do :; done ) &
hog=$!
trap 'kill "$hog" 2>/dev/null || true' EXIT

failed_runs=0
for k in $(seq 1 "$runs"); do
    log="$logs/run-$k.log"
    start=$(date +%s)
    if cargo test --workspace --all-targets --locked --no-fail-fast >"$log" 2>&1; then
        echo "run $k/$runs: green ($(( $(date +%s) - start )) s)"
    else
        failed_runs=$((failed_runs + 1))
        echo "run $k/$runs: FAILED ($(( $(date +%s) - start )) s), log $log"
        # libtest prints `test NAME ... FAILED` per failure, then each one's output.
        grep -E '^test .* \.\.\. FAILED$' "$log" | sed 's/^/    /' || echo "    (no failing test named: a build or harness error, see the log)"
        grep -E -A12 '^---- .* stdout ----$' "$log" | grep -E 'Error:|panicked|^---- ' | sed 's/^/      /' || true
    fi
done
echo "$((runs - failed_runs)) of $runs runs green"
[ "$failed_runs" -eq 0 ]
