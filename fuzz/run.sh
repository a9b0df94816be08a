#!/usr/bin/env bash
# Builds every fuzz target once, then fuzzes each for SECONDS (default 60), one at a time,
# one job each (-jobs=1: the machine has 2 cores and others compile on it), and prints a
# table: target, executions (libFuzzer's stat::number_of_executed_units), crashes (new
# files in fuzz/artifacts/<target>/).
#
# Usage: fuzz/run.sh [SECONDS] [TARGET...]
#
# Before each run the committed seeds (fuzz/seeds/<target>/) are copied into the live
# corpus (fuzz/corpus/<target>/, gitignored), so the corpus keeps growing across runs.
# After a crash libFuzzer stops; the run is restarted for the remaining time (at most
# MAX_RESTARTS times, default 3) so one shallow bug does not hide the rest, and the
# executions of all the attempts are added up.
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). The stable toolchain is told to
# accept the nightly-only flags cargo-fuzz passes (-Zsanitizer=address...) with
# RUSTC_BOOTSTRAP=1; see fuzz/README.md.
set -euo pipefail

SECONDS_PER_TARGET="${1:-60}"
shift || true
FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$FUZZ_DIR"
export RUSTC_BOOTSTRAP=1
MAX_RESTARTS="${MAX_RESTARTS:-3}"

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

echo "building ${#targets[@]} targets..." >&2
cargo fuzz build >&2
BIN_DIR="$FUZZ_DIR/target/x86_64-unknown-linux-gnu/release"
LOG_DIR="$FUZZ_DIR/target/run-logs"
mkdir -p "$LOG_DIR"
STAMP="$LOG_DIR/.started"
touch "$STAMP"

count_crashes() {
    find "$1" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l
}

rows=()
for t in "${targets[@]}"; do
    corpus="$FUZZ_DIR/corpus/$t"
    artifacts="$FUZZ_DIR/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    if [[ -d "$FUZZ_DIR/seeds/$t" ]]; then
        cp -n "$FUZZ_DIR/seeds/$t"/* "$corpus"/ 2>/dev/null || true
    fi
    before=$(count_crashes "$artifacts")
    execs=0
    attempts=0
    start=$(date +%s)
    while :; do
        left=$((SECONDS_PER_TARGET - ($(date +%s) - start)))
        ((left > 0)) || break
        log="$LOG_DIR/$t.$attempts.log"
        echo "fuzzing $t for ${left}s (log: $log)" >&2
        # -jobs=1 runs one worker process that logs to fuzz-0.log in the working
        # directory, so run from a per-target directory and read that log.
        rm -f "$LOG_DIR/fuzz-0.log"
        set +e
        (cd "$LOG_DIR" && "$BIN_DIR/$t" "$corpus" \
            -jobs=1 -workers=1 \
            -max_total_time="$left" -rss_limit_mb=2048 -timeout=10 \
            -print_final_stats=1 -artifact_prefix="$artifacts/" >"$log.parent" 2>&1)
        set -e
        cat "$LOG_DIR/fuzz-0.log" >"$log" 2>/dev/null || cp "$log.parent" "$log"
        n=$(grep -a 'stat::number_of_executed_units' "$log" | tail -1 | awk '{print $2}')
        if [[ -z "$n" ]]; then
            # Killed by a crash before the final stats: take the last status line.
            n=$(grep -aoE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
        fi
        execs=$((execs + ${n:-0}))
        attempts=$((attempts + 1))
        if grep -aqE 'ERROR: libFuzzer|ERROR: AddressSanitizer|panicked at|deadly signal' "$log"; then
            ((attempts <= MAX_RESTARTS)) || break
            continue
        fi
        break
    done
    after=$(count_crashes "$artifacts")
    rows+=("$t $execs $((after - before)) $(find "$corpus" -type f | wc -l)")
done

printf '\n%-16s %14s %8s %8s\n' target executions crashes corpus
printf '%-16s %14s %8s %8s\n' ---------------- -------------- -------- --------
total_crashes=0
for row in "${rows[@]}"; do
    read -r t e c k <<<"$row"
    printf '%-16s %14s %8s %8s\n' "$t" "$e" "$c" "$k"
    total_crashes=$((total_crashes + c))
done
echo
if ((total_crashes > 0)); then
    echo "new artifacts:"
    for t in "${targets[@]}"; do
        find "$FUZZ_DIR/artifacts/$t" -maxdepth 1 -type f -newer "$STAMP" \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) 2>/dev/null | sed 's/^/  /' || true
    done
fi
