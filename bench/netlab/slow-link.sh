#!/usr/bin/env bash
# slow-link.sh - RoQR against TCP-BBR where the link is slower than the stream, and on
# random loss, from both sides of the impaired link, in one session (run.sh per case).
#
#   sudo bench/netlab/slow-link.sh            # ~25 min; results in target/netlab/slow-link-DATE/
#
# Cases (each with TCP-BBR and RoQR, publisher behind the link, then player behind it):
#   random     50 ms / 2 % and 100 ms / 5 % loss, 20 Mbit/s
#   shallow    20 -> 2 Mbit/s for 20 s, bottleneck queue 50 ms at the link's rate
#              (at 2 Mbit/s tbf's floor of 3 bursts, ~45 kB: 180 ms)
#   deep       the same drop behind a 500 ms queue
#   slow       the link at 2.1 Mbit/s (2/3 of the stream) for 60 s
# Environment: SIDES [publish play], TRANSPORTS [tcp-bbr roqr], QRELAY (binary), OUT.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${OUT:-$ROOT/target/netlab/slow-link-$(date -u +%Y%m%d-%H%M%S)}
SIDES=${SIDES:-publish play}
export TRANSPORTS=${TRANSPORTS:-tcp-bbr roqr}
mkdir -p "$OUT"
for side in $SIDES; do
    SIDE=$side OUT=$OUT/$side-random CASES="50:2 100:5" DURATION=40 "$HERE/run.sh"
    SIDE=$side OUT=$OUT/$side-shallow CASES=drop DURATION=50 NETLAB_QUEUE_MS=50 "$HERE/run.sh"
    SIDE=$side OUT=$OUT/$side-deep CASES=drop DURATION=50 NETLAB_QUEUE_MS=500 "$HERE/run.sh"
    SIDE=$side OUT=$OUT/$side-slow CASES=drop DURATION=75 NETLAB_QUEUE_MS=50 DROP_RATE=2.1 DROP_AT=5 DROP_FOR=60 \
        "$HERE/run.sh"
done
for f in "$OUT"/*/results.md; do
    echo "## $(basename "$(dirname "$f")")"
    cat "$f"
    echo
done >"$OUT/all.md"
echo "results in $OUT/all.md" >&2
