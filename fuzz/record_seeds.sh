#!/usr/bin/env bash
# Records real RTMP traffic (ffmpeg publishing to and playing from qrelay) through a small
# python3 TCP proxy that dumps both directions of every connection, then cuts the captures
# into the seed corpora under fuzz/seeds/<target>/ (see fuzz/README.md for the formats).
#
# Needs: ffmpeg (with libx264 and the lavfi input), python3, and the release qrelay binary
# (built here if missing). Re-running replaces fuzz/seeds/ entirely; the seeds are small
# (well under 1 MB in all) and meant to be committed.
#
# Usage: fuzz/record_seeds.sh            (from anywhere)
#        KEEP_CAPTURE=1 fuzz/record_seeds.sh   keep the raw captures in fuzz/target/capture
set -euo pipefail

FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$FUZZ_DIR")"
BIN="$ROOT/target/release/qrelay"
WORK="$(mktemp -d)"
CAPTURE="$WORK/capture"
mkdir -p "$CAPTURE"

pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if [[ "${KEEP_CAPTURE:-}" == 1 ]]; then
        mkdir -p "$FUZZ_DIR/target"
        rm -rf "$FUZZ_DIR/target/capture"
        cp -r "$CAPTURE" "$FUZZ_DIR/target/capture"
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

command -v ffmpeg >/dev/null || { echo "ffmpeg is required" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is required" >&2; exit 1; }
if [[ ! -x "$BIN" ]]; then
    (cd "$ROOT" && cargo build --release)
fi

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
SERVER_PORT="$(free_port)"
PROXY_PORT="$(free_port)"

"$BIN" serve --listen "127.0.0.1:$SERVER_PORT" --cert-dir "$WORK/certs" >"$WORK/qrelay.log" 2>&1 &
pids+=($!)

# The proxy: one thread per direction per connection; connection N writes
# conn-N.c2s (client to server) and conn-N.s2c.
cat >"$WORK/proxy.py" <<'EOF'
import socket, sys, threading

listen_port, server_port, out_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

def pump(src, dst, path):
    with open(path, "wb") as f:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            f.write(data)
            f.flush()
            try:
                dst.sendall(data)
            except OSError:
                break
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

lsock = socket.socket()
lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lsock.bind(("127.0.0.1", listen_port))
lsock.listen(16)
n = 0
while True:
    client, _ = lsock.accept()
    server = socket.create_connection(("127.0.0.1", server_port))
    base = f"{out_dir}/conn-{n}"
    n += 1
    threading.Thread(target=pump, args=(client, server, base + ".c2s"), daemon=True).start()
    threading.Thread(target=pump, args=(server, client, base + ".s2c"), daemon=True).start()
EOF
python3 "$WORK/proxy.py" "$PROXY_PORT" "$SERVER_PORT" "$CAPTURE" &
pids+=($!)

# Wait for both listeners.
for port in "$SERVER_PORT" "$PROXY_PORT"; do
    for _ in $(seq 50); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1', $port)).close()" 2>/dev/null && break
        sleep 0.1
    done
done
# The readiness probes above went through the proxy too: start numbering afresh.
sleep 0.2
rm -f "$CAPTURE"/*

URL="rtmp://127.0.0.1:$PROXY_PORT/live/seed"
echo "publishing to $URL"
ffmpeg -hide_banner -loglevel error -re \
    -f lavfi -i testsrc=size=160x120:rate=15 -f lavfi -i sine -t 2 \
    -c:v libx264 -preset ultrafast -g 15 -c:a aac -b:a 32k -f flv "$URL" &
publisher=$!
sleep 0.8
echo "playing from $URL"
ffmpeg -hide_banner -loglevel error -i "$URL" -t 1 -f null - || echo "(player exited with $?)"
wait "$publisher" || echo "(publisher exited with $?)"
sleep 0.5

# A small FLV file straight from ffmpeg (no network).
ffmpeg -hide_banner -loglevel error -f lavfi -i testsrc=size=64x48:rate=10 -f lavfi -i sine -t 0.6 \
    -c:v libx264 -preset ultrafast -g 5 -c:a aac -b:a 16k -f flv "$CAPTURE/small.flv"

ls -l "$CAPTURE"
python3 "$FUZZ_DIR/make_seeds.py" "$CAPTURE" "$FUZZ_DIR/seeds"
du -sh "$FUZZ_DIR/seeds"
