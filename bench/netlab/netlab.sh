#!/usr/bin/env bash
# netlab.sh - a network-impairment lab: two network namespaces joined by a wire that
# adds delay, jitter, loss and a rate limit, for measuring qrelay on bad networks.
#
#   <ns>-srv: veth-srv 10.201.0.1/24 <-> <ns>-net: n-srv [br0] n-cli <-> <ns>-cli: veth-cli 10.201.0.2/24
#
# The impairment lives only in the middle namespace (a transparent L2 bridge), so the
# endpoints' stacks, qdiscs and socket accounting are those of a real host. Delay,
# jitter and loss are applied in user space (nfq_netem.py behind iptables NFQUEUE)
# because many kernels lack sch_netem; the rate limit is the kernel's `tbf` on the
# wire's egress ports, so the bottleneck queue is a real one.
#
# Usage (root):
#   netlab.sh up                          create namespaces and links (idempotent)
#   netlab.sh impair DELAY_MS JITTER_MS LOSS_PCT [RATE_MBIT]
#                                         impair both directions (replaces the previous
#                                         setting); DELAY is one way, so RTT = 2 x DELAY;
#                                         LOSS and RATE apply to each direction; RATE 0 = none
#   netlab.sh rate RATE_MBIT              change the rate limit live (loss/delay unchanged)
#   netlab.sh tcp-cc ALGO                 TCP congestion control of the connections
#                                         between client and server, either side's
#                                         (a route attribute, see below)
#   netlab.sh clear                       remove all impairment (links stay up)
#   netlab.sh down                        clear and delete the namespaces (idempotent)
#   netlab.sh status                      addresses, qdiscs, rules, daemon statistics
#   netlab.sh srv|cli|net CMD [ARGS]      run CMD inside a namespace
#
# Environment:
#   NETLAB_NAME        namespace prefix (default qrl; namespaces qrl-srv, qrl-cli, qrl-net),
#                      so this lab never collides with another one on the same machine
#   NETLAB_SEED        RNG seed of the impairment (default 1; server->client uses SEED+1)
#   NETLAB_QUEUE_MS    bottleneck buffer of the rate limiter, in ms at RATE (default 50)
#   NETLAB_LOSS_BURST  mean loss-burst length in packets (Gilbert-Elliott); 1 = independent
#
# Why TCP congestion control is set per route: a child namespace may only make an
# algorithm its default (sysctl net.ipv4.tcp_congestion_control) if it is listed in the
# host's net.ipv4.tcp_allowed_congestion_control, which often holds only reno and bbr.
# A route's `congctl` has no such restriction, and this leaves the host untouched.
set -euo pipefail

NAME=${NETLAB_NAME:-qrl}
SRV_NS=$NAME-srv
CLI_NS=$NAME-cli
NET_NS=$NAME-net
SRV_IF=veth-srv
CLI_IF=veth-cli
NSRV_IF=n-srv  # in the wire, faces the server: its egress carries client -> server
NCLI_IF=n-cli  # in the wire, faces the client: its egress carries server -> client
BR=br0
SRV_IP=10.201.0.1
CLI_IP=10.201.0.2
STATE=/run/qrelay-netlab-$NAME
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NFQ_PY=$HERE/nfq_netem.py
CHAIN=NETLAB

die() { echo "netlab: $*" >&2; exit 1; }
log() { echo "netlab: $*" >&2; }
ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx -- "$1"; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
is_num() { [[ "$1" =~ ^[0-9]+([.][0-9]+)?$ ]]; }
gt0() { awk -v x="$1" 'BEGIN { exit !(x > 0) }'; }

# Direction -> "egress port in the wire" and the physdev match that selects it.
egress_of() { case $1 in c2s) echo "$NSRV_IF" ;; s2c) echo "$NCLI_IF" ;; esac; }
ingress_of() { case $1 in c2s) echo "$NCLI_IF" ;; s2c) echo "$NSRV_IF" ;; esac; }

# Re-creates a veth pair unless both ends already exist where they belong.
veth_pair() {  # NS_A IF_A NS_B IF_B
    if ip -n "$1" link show dev "$2" >/dev/null 2>&1 && ip -n "$3" link show dev "$4" >/dev/null 2>&1; then
        return 0
    fi
    ip -n "$1" link del dev "$2" 2>/dev/null || true
    ip -n "$3" link del dev "$4" 2>/dev/null || true
    ip link add "$2" netns "$1" type veth peer name "$4" netns "$3"
}

cmd_up() {
    local ns
    for ns in "$SRV_NS" "$CLI_NS" "$NET_NS"; do ns_exists "$ns" || ip netns add "$ns"; done
    veth_pair "$SRV_NS" "$SRV_IF" "$NET_NS" "$NSRV_IF"
    veth_pair "$CLI_NS" "$CLI_IF" "$NET_NS" "$NCLI_IF"
    ip -n "$NET_NS" link show dev "$BR" >/dev/null 2>&1 ||
        ip -n "$NET_NS" link add name "$BR" type bridge forward_delay 0 stp_state 0
    in_ns "$NET_NS" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 || true
    # Bridged IPv4 must traverse iptables (br_netfilter), or NFQUEUE never sees it.
    in_ns "$NET_NS" sysctl -qw net.bridge.bridge-nf-call-iptables=1 ||
        die "cannot enable net.bridge.bridge-nf-call-iptables (br_netfilter missing?)"
    ip -n "$NET_NS" link set dev "$NSRV_IF" master "$BR"
    ip -n "$NET_NS" link set dev "$NCLI_IF" master "$BR"
    local dev
    for dev in lo "$NSRV_IF" "$NCLI_IF" "$BR"; do ip -n "$NET_NS" link set dev "$dev" up; done
    ip -n "$SRV_NS" addr replace "$SRV_IP/24" dev "$SRV_IF"
    ip -n "$CLI_NS" addr replace "$CLI_IP/24" dev "$CLI_IF"
    for ns in "$SRV_NS:$SRV_IF" "$CLI_NS:$CLI_IF"; do
        in_ns "${ns%%:*}" sysctl -qw "net.ipv6.conf.${ns#*:}.disable_ipv6=1" || true
        ip -n "${ns%%:*}" link set dev lo up
        ip -n "${ns%%:*}" link set dev "${ns#*:}" up
    done
    mkdir -p "$STATE"
    log "up: $SRV_NS $SRV_IP <-> $NET_NS <-> $CLI_NS $CLI_IP"
}

alive() {  # PID: running and not a zombie
    [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

stop_daemon() {  # DIR
    local pidf=$STATE/nfq-$1.pid pid i
    [ -f "$pidf" ] || return 0
    pid=$(cat "$pidf" 2>/dev/null || true)
    # Only signal the process if it still is our daemon (pids get reused).
    if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$NFQ_PY"; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 40); do alive "$pid" || break; sleep 0.05; done
        if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$pidf"
}

cmd_clear() {
    ns_exists "$NET_NS" || return 0
    # Stop diverting packets first: a rule whose daemon is gone black-holes its queue.
    if in_ns "$NET_NS" iptables -t mangle -S "$CHAIN" >/dev/null 2>&1; then
        while in_ns "$NET_NS" iptables -t mangle -D FORWARD -j "$CHAIN" 2>/dev/null; do :; done
        in_ns "$NET_NS" iptables -t mangle -F "$CHAIN"
        in_ns "$NET_NS" iptables -t mangle -X "$CHAIN"
    fi
    stop_daemon c2s
    stop_daemon s2c
    tc -n "$NET_NS" qdisc del dev "$NSRV_IF" root 2>/dev/null || true
    tc -n "$NET_NS" qdisc del dev "$NCLI_IF" root 2>/dev/null || true
    rm -f "$STATE/impair"
}

tbf_args() {  # RATE_MBIT -> tbf parameters with a NETLAB_QUEUE_MS bottleneck buffer
    awk -v r="$1" -v q="${NETLAB_QUEUE_MS:-50}" 'BEGIN {
        bps = r * 1e6 / 8
        burst = bps * 0.002; if (burst < 15140) burst = 15140   # >= 10 MTU, ~2 ms
        limit = bps * q / 1000; if (limit < 3 * burst) limit = 3 * burst
        printf "rate %sbit burst %d limit %d", r * 1e6, burst, limit }'
}

set_rate() {  # RATE_MBIT (0 = unlimited)
    local dir dev
    for dir in c2s s2c; do
        dev=$(egress_of "$dir")
        if gt0 "$1"; then
            # shellcheck disable=SC2046
            tc -n "$NET_NS" qdisc replace dev "$dev" root tbf $(tbf_args "$1")
        else
            tc -n "$NET_NS" qdisc del dev "$dev" root 2>/dev/null || true
        fi
    done
}

start_daemon() {  # DIR QUEUE DELAY JITTER LOSS SEED
    local dir=$1 pidf=$STATE/nfq-$1.pid logf=$STATE/nfq-$1.log i
    rm -f "$pidf"
    setsid -f ip netns exec "$NET_NS" python3 "$NFQ_PY" --label "$dir" --queue "$2" --delay "$3" \
        --jitter "$4" --loss "$5" --seed "$6" --loss-burst "${NETLAB_LOSS_BURST:-1}" \
        --ready-file "$pidf" </dev/null >>"$logf" 2>&1
    for i in $(seq 1 50); do [ -s "$pidf" ] && return 0; sleep 0.1; done
    tail -5 "$logf" >&2 || true
    die "impairment daemon $dir did not start (see $logf)"
}

cmd_impair() {
    [ $# -ge 3 ] && [ $# -le 4 ] || die "usage: impair DELAY_MS JITTER_MS LOSS_PCT [RATE_MBIT]"
    local delay=$1 jitter=$2 loss=$3 rate=${4:-0} v
    for v in "$delay" "$jitter" "$loss" "$rate"; do is_num "$v" || die "not a non-negative number: $v"; done
    awk -v l="$loss" 'BEGIN { exit !(l <= 100) }' || die "LOSS_PCT must be <= 100"
    ns_exists "$NET_NS" || cmd_up
    cmd_clear
    local seed=${NETLAB_SEED:-1} q=0 dir
    in_ns "$NET_NS" iptables -t mangle -N "$CHAIN"
    for dir in c2s s2c; do
        start_daemon "$dir" "$q" "$delay" "$jitter" "$loss" $((seed + q))
        # The daemon is bound before the rule exists, so no packet waits on an empty queue.
        in_ns "$NET_NS" iptables -t mangle -A "$CHAIN" -m physdev --physdev-in "$(ingress_of "$dir")" \
            -j NFQUEUE --queue-num "$q"
        q=$((q + 1))
    done
    in_ns "$NET_NS" iptables -t mangle -A FORWARD -j "$CHAIN"
    set_rate "$rate"
    echo "delay=${delay}ms jitter=${jitter}ms loss=${loss}% rate=${rate}Mbit/s (each direction)" >"$STATE/impair"
    log "impaired: $(cat "$STATE/impair")"
}

cmd_rate() {
    [ $# -eq 1 ] && is_num "$1" || die "usage: rate RATE_MBIT"
    ns_exists "$NET_NS" || die "not up"
    set_rate "$1"
}

cmd_tcp_cc() {
    [ $# -eq 1 ] || die "usage: tcp-cc ALGO"
    grep -qw -- "$1" /proc/sys/net/ipv4/tcp_available_congestion_control ||
        die "$1 is not available (have: $(cat /proc/sys/net/ipv4/tcp_available_congestion_control))"
    ns_exists "$CLI_NS" || cmd_up
    ip -n "$CLI_NS" route replace "$SRV_IP/32" dev "$CLI_IF" congctl lock "$1"
    # And the server's connections to the client (a relay sending to a player over TCP).
    ip -n "$SRV_NS" route replace "$CLI_IP/32" dev "$SRV_IF" congctl lock "$1"
}

cmd_down() {
    cmd_clear
    local ns
    for ns in "$SRV_NS" "$CLI_NS" "$NET_NS"; do
        if ns_exists "$ns"; then ip netns del "$ns"; fi
    done
    rm -rf "$STATE"
}

cmd_status() {
    local ns dir pid
    if [ -f "$STATE/impair" ]; then cat "$STATE/impair"; else echo "no impairment"; fi
    for ns in "$SRV_NS" "$NET_NS" "$CLI_NS"; do
        ns_exists "$ns" || continue
        echo "[$ns]"
        ip -n "$ns" -br addr | grep -v '^lo ' | sed 's/^/  /' || true
        ip -n "$ns" route | grep congctl | sed 's/^/  route: /' || true
        tc -n "$ns" qdisc show | grep -v 'noqueue\|dev lo ' | sed 's/^/  /' || true
        in_ns "$ns" iptables -t mangle -S "$CHAIN" 2>/dev/null | grep -- '-A' | sed 's/^/  /' || true
    done
    for dir in c2s s2c; do
        [ -f "$STATE/nfq-$dir.pid" ] || continue
        pid=$(cat "$STATE/nfq-$dir.pid")
        if alive "$pid" && kill -USR1 "$pid" 2>/dev/null; then
            sleep 0.3
            echo "daemon $dir: $(grep 'stats:' "$STATE/nfq-$dir.log" | tail -1)"
        else
            echo "daemon $dir (pid $pid) NOT RUNNING: its packets are black-holed"
        fi
    done
}

[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, iptables, tc)"
sub=${1:-}
[ $# -gt 0 ] && shift
case "$sub" in
    up) cmd_up ;;
    impair) cmd_impair "$@" ;;
    rate) cmd_rate "$@" ;;
    tcp-cc) cmd_tcp_cc "$@" ;;
    clear) cmd_clear ;;
    down) cmd_down ;;
    status) cmd_status ;;
    srv) in_ns "$SRV_NS" "$@" ;;
    cli) in_ns "$CLI_NS" "$@" ;;
    net) in_ns "$NET_NS" "$@" ;;
    *) sed -n '2,/^set -euo/p' "$0" | grep -v '^set ' | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
