#!/usr/bin/env bash
# Installs what the end-to-end tests need beyond Rust: ffmpeg and ffprobe (with libx264
# and the native AAC encoder, as Debian's ffmpeg package has them), openssl (s_client
# plays a TLS 1.2 encoder against RTMPS), redis-server (the cluster registry tests,
# tests/cluster.rs), nginx with the RTMP module (a push-forwarding target that is not
# qrelay, tests/relay_push.rs; the tests run their own nginx), and chromium (the status
# page in headless Chromium, tests/control.rs; the player page, tests/browser.rs, driven
# by Node.js over the DevTools pipe, with mpegts.js from the npm registry as a third-party
# HTTP-FLV player), and iproute2, iptables and python3 (the
# impairment lab in network namespaces, tests/netlab.rs; it needs root).
# Idempotent: does nothing but print versions when they are already installed.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }
NGINX_RTMP_MODULE=/usr/lib/nginx/modules/ngx_rtmp_module.so

if ! have ffmpeg || ! have ffprobe || ! have openssl || ! have redis-server || ! have nginx \
    || [[ ! -f $NGINX_RTMP_MODULE ]] || ! have chromium || ! have node || ! have npm || ! have ip || ! have iptables || ! have python3; then
    if ! have apt-get; then
        echo "ffmpeg/ffprobe/openssl/redis-server/nginx-rtmp/chromium missing and apt-get not available: install them by hand" >&2
        exit 1
    fi
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if ! have sudo; then
            echo "ffmpeg/ffprobe/openssl/redis-server/nginx-rtmp/chromium missing; run this script as root or install sudo" >&2
            exit 1
        fi
        sudo="sudo"
    fi
    $sudo apt-get update
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y ffmpeg openssl redis-server \
        nginx-light libnginx-mod-rtmp chromium nodejs npm iproute2 iptables python3
fi

# Whole outputs are read (sed, not head/grep -q) so pipefail never sees a SIGPIPE.
ffmpeg -hide_banner -version | sed -n 1p
ffprobe -hide_banner -version | sed -n 1p
openssl version
redis-server --version
nginx -v 2>&1 | sed -n 1p
chromium --version 2>/dev/null
echo "node $(node --version)"

# mpegts.js for tests/browser.rs: its bundle only (`npm install` would follow a git
# dependency to GitHub, which CI cannot reach; the bundle needs none of it).
MPEGTS_VERSION=1.8.0
mpegts_dir="$(cd "$(dirname "$0")/.." && pwd)/tests/browser/node_modules/mpegts.js"
if [[ "$(cat "$mpegts_dir/.version" 2>/dev/null)" != "$MPEGTS_VERSION" ]]; then
    tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent "mpegts.js@$MPEGTS_VERSION" >/dev/null)
    rm -rf "$mpegts_dir" && mkdir -p "$mpegts_dir"
    tar -xzf "$tmp/mpegts.js-$MPEGTS_VERSION.tgz" -C "$mpegts_dir" --strip-components=1
    echo "$MPEGTS_VERSION" >"$mpegts_dir/.version"
    rm -rf "$tmp"
fi
echo "mpegts.js $MPEGTS_VERSION"
encoders="$(ffmpeg -hide_banner -encoders 2>/dev/null)"
for enc in libx264 aac; do
    if ! grep -qw -- "$enc" <<<"$encoders"; then
        echo "ffmpeg lacks the $enc encoder the tests use" >&2
        exit 1
    fi
done
echo "test dependencies ready"
