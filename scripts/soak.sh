#!/usr/bin/env bash
# Soak test: the release relay as its own process, 1 publisher x 200 players (half TCP,
# half QUIC tunnel) joining and leaving at random for SECONDS (default 600), with the
# relay's RSS printed every 30 s. Fails when memory grows (end > baseline x 1.2 + 16 MiB)
# or any player missed a frame. See tests/soak.rs.
#
#   scripts/soak.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-600}"
if ! [[ "$secs" =~ ^[0-9]+$ ]] || (( secs < 60 )); then
    echo "usage: $0 [SECONDS >= 60]" >&2
    exit 2
fi

cargo build --release --bin qrelay
log="$(mktemp -t qrelay-soak.XXXXXX.log)"
echo "soak: ${secs} s; full output in ${log}"

set +e
SOAK_SECS="$secs" cargo test --release --test soak -- --ignored --nocapture 2>&1 | tee "$log"
status="${PIPESTATUS[0]}"
set -e

echo
echo "== relay RSS (every 30 s) =="
grep '^SOAK' "$log" || echo "(no table: the soak did not start; see ${log})"
if [[ "$status" -eq 0 ]]; then
    echo "soak: PASSED"
else
    echo "soak: FAILED (exit ${status})"
fi
exit "$status"
