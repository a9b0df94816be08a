#!/usr/bin/env python3
"""Userspace netem substitute: delay / jitter / loss via NFQUEUE.

Many kernels (this project's CI and lab machines included) are built without
sch_netem, so bench/netlab/netlab.sh impairs links with this daemon instead.
An iptables rule in the middle ("wire") namespace
   iptables -t mangle -A FORWARD -m physdev --physdev-in <port> -j NFQUEUE --queue-num N
hands every bridged IPv4 packet of one direction to this process, which decides
per packet:
   * drop (Bernoulli loss, or Gilbert-Elliott bursts if --loss-burst > 1)
   * otherwise hold the verdict for delay +/- jitter, then NF_ACCEPT.
Packets are held in the wire namespace, never in the endpoints' stacks, so
neither sender's TCP small-queue accounting nor its qdisc sees the delay.

Only raw netlink via the standard library is used (no libnetfilter_queue).
The kernel splits GSO super-packets into MTU-sized segments before queueing
(we do not set NFQA_CFG_F_GSO), so loss and jitter are per wire packet.

Jitter: uniform in [delay-jitter, delay+jitter] (netem's default without a
distribution table) or normal (--dist normal, sigma = jitter).  By default
packet order is preserved (a packet never leaves before its predecessor, as
with netem + rate); --reorder gives netem's plain behaviour where jitter
reorders packets.

RNG is seeded (--seed) so the loss/jitter sequence is repeatable.
Stats are written to stderr on SIGUSR1 and at exit.
"""
import argparse
import collections
import errno
import heapq
import os
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
NLMSG_DONE = 3
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_PAYLOAD = 10
NFQA_CAP_LEN = 13
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_PACKET = 2
NF_DROP = 0
NF_ACCEPT = 1

NLHDR = struct.Struct("=IHHII")
NFGEN = struct.Struct("=BBH")  # family, version, res_id (big endian, packed by hand)


def nla(atype, payload):
    ln = 4 + len(payload)
    pad = (4 - ln % 4) % 4
    return struct.pack("=HH", ln, atype) + payload + b"\0" * pad


def nfq_msg(msgtype, queue, attrs, flags=NLM_F_REQUEST, seq=0, family=socket.AF_INET):
    body = struct.pack("=BBH", family, 0, socket.htons(queue)) + b"".join(attrs)
    return NLHDR.pack(NLHDR.size + len(body), (NFNL_SUBSYS_QUEUE << 8) | msgtype, flags, seq, 0) + body


def verdict_msg(queue, pkt_id, verdict):
    return nfq_msg(NFQNL_MSG_VERDICT, queue, [nla(NFQA_VERDICT_HDR, struct.pack("!II", verdict, pkt_id))])


class Stats:
    def __init__(self):
        self.rx = 0
        self.dropped = 0
        self.accepted = 0
        self.max_held = 0
        self.delay_sum = 0.0
        self.bytes = 0
        self.enobufs = 0
        self.t0 = time.monotonic()

    label = ""

    def line(self, held):
        dt = time.monotonic() - self.t0
        mean = (self.delay_sum / self.accepted * 1000) if self.accepted else 0.0
        loss = (100.0 * self.dropped / self.rx) if self.rx else 0.0
        return ("nfq_netem%s stats: t=%.1fs rx=%d accepted=%d dropped=%d (%.2f%%) held_now=%d max_held=%d "
                "mean_added_delay=%.2fms bytes=%d enobufs=%d" %
                (self.label, dt, self.rx, self.accepted, self.dropped, loss, held, self.max_held, mean, self.bytes, self.enobufs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--queue", type=int, default=0)
    ap.add_argument("--delay", type=float, default=0.0, help="ms")
    ap.add_argument("--jitter", type=float, default=0.0, help="ms")
    ap.add_argument("--loss", type=float, default=0.0, help="percent")
    ap.add_argument("--loss-burst", type=float, default=1.0,
                    help="mean loss burst length in packets (Gilbert-Elliott); 1 = independent losses")
    ap.add_argument("--dist", choices=["uniform", "normal"], default="uniform")
    ap.add_argument("--reorder", action="store_true", help="let jitter reorder packets (netem default)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--maxlen", type=int, default=65536, help="kernel queue max length (packets)")
    ap.add_argument("--label", default="", help="name shown in log lines (e.g. c2s)")
    ap.add_argument("--ready-file", default=None, help="write our pid here once bound")
    a = ap.parse_args()

    rng = random.Random(a.seed)
    delay = a.delay / 1000.0
    jitter = a.jitter / 1000.0
    p_loss = a.loss / 100.0
    # Gilbert-Elliott (bad state = always lost, good state = never lost).
    burst = max(1.0, a.loss_burst)
    ge = burst > 1.0 and 0.0 < p_loss < 1.0
    p_bg = 1.0 / burst
    p_gb = p_loss * p_bg / (1.0 - p_loss) if ge else 0.0
    bad = False

    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    s.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
    s.bind((0, 0))

    def request(msg):
        # send a config request and wait for its ack (skipping anything else)
        want = NLHDR.unpack_from(msg, 0)[3]
        s.send(msg)
        while True:
            data = s.recv(65536)
            off = 0
            while off + 16 <= len(data):
                ln, typ, _, sq, _ = NLHDR.unpack_from(data, off)
                if typ == NLMSG_ERROR and sq == want:
                    err = struct.unpack_from("=i", data, off + NLHDR.size)[0]
                    if err != 0:
                        raise OSError(-err, "nfqueue config: " + os.strerror(-err))
                    return
                if ln < 16:
                    break
                off += (ln + 3) & ~3

    f_ack = NLM_F_REQUEST | NLM_F_ACK
    request(nfq_msg(NFQNL_MSG_CONFIG, a.queue, [nla(NFQA_CFG_CMD, struct.pack("=BBH", NFQNL_CFG_CMD_BIND, 0, socket.htons(socket.AF_INET)))], f_ack, 1, socket.AF_UNSPEC))
    # copy only the first 64 bytes (IP + transport header): cheap, and we learn the length
    request(nfq_msg(NFQNL_MSG_CONFIG, a.queue, [nla(NFQA_CFG_PARAMS, struct.pack("!IB", 64, NFQNL_COPY_PACKET))], f_ack, 2, socket.AF_UNSPEC))
    request(nfq_msg(NFQNL_MSG_CONFIG, a.queue, [nla(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", a.maxlen))], f_ack, 3, socket.AF_UNSPEC))
    s.setblocking(False)
    if a.ready_file:  # written (with our pid) only once the queue is bound
        tmp = a.ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % os.getpid())
        os.rename(tmp, a.ready_file)

    st = Stats()
    st.label = "[%s]" % a.label if a.label else ""
    fifo = collections.deque()   # (due, id) in order-preserving mode
    heap = []                    # (due, seq, id) in reorder mode
    seq = 0
    last_due = 0.0
    running = [True]
    dump = [False]

    def on_term(*_):
        running[0] = False

    def on_usr1(*_):
        dump[0] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGUSR1, on_usr1)
    print("nfq_netem%s: queue=%d delay=%.1fms jitter=%.1fms(%s) loss=%.3f%% burst=%.1f reorder=%s seed=%d" %
          (st.label, a.queue, a.delay, a.jitter, a.dist, a.loss, burst, a.reorder, a.seed), file=sys.stderr, flush=True)

    out = []
    recv = s.recv
    mono = time.monotonic
    unpack_hdr = NLHDR.unpack_from
    while running[0]:
        now = mono()
        # 1. release due packets
        if a.reorder:
            while heap and heap[0][0] <= now:
                _, _, pid = heapq.heappop(heap)
                out.append(verdict_msg(a.queue, pid, NF_ACCEPT))
        else:
            while fifo and fifo[0][0] <= now:
                out.append(verdict_msg(a.queue, fifo.popleft()[1], NF_ACCEPT))
        if out:
            try:
                s.send(b"".join(out))
            except OSError as e:
                print("nfq_netem: verdict send failed: %s" % e, file=sys.stderr, flush=True)
            out.clear()
        if dump[0]:
            dump[0] = False
            print(st.line(len(fifo) + len(heap)), file=sys.stderr, flush=True)
        # 2. wait for packets or next deadline
        nxt = heap[0][0] if (a.reorder and heap) else (fifo[0][0] if fifo else None)
        timeout = None if nxt is None else max(0.0, nxt - mono())
        try:
            r, _, _ = select.select([s], [], [], timeout if timeout is not None else 0.25)
        except InterruptedError:
            continue
        if not r:
            continue
        # 3. drain the socket
        while True:
            try:
                data = recv(65536)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    st.enobufs += 1
                    continue
                raise
            now = mono()
            off = 0
            dl = len(data)
            while off + 16 <= dl:
                ln, typ, _, _, _ = unpack_hdr(data, off)
                if ln < 16:
                    break
                if typ == ((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET):
                    pos = off + 20
                    end = off + ln
                    pid = None
                    plen = 0
                    while pos + 4 <= end:
                        alen, atype = struct.unpack_from("=HH", data, pos)
                        atype &= 0x3FFF
                        if alen < 4:
                            break
                        if atype == NFQA_PACKET_HDR:
                            pid = struct.unpack_from("!I", data, pos + 4)[0]
                        elif atype == NFQA_CAP_LEN:
                            plen = struct.unpack_from("!I", data, pos + 4)[0]
                        elif atype == NFQA_PAYLOAD and not plen and alen >= 8:
                            plen = struct.unpack_from("!H", data, pos + 6)[0]  # IPv4 total length
                        pos += (alen + 3) & ~3
                    if pid is not None:
                        st.rx += 1
                        st.bytes += plen
                        if ge:
                            bad = (rng.random() >= p_bg) if bad else (rng.random() < p_gb)
                            lost = bad
                        else:
                            lost = p_loss > 0.0 and rng.random() < p_loss
                        if lost:
                            st.dropped += 1
                            out.append(verdict_msg(a.queue, pid, NF_DROP))
                        elif delay <= 0.0 and jitter <= 0.0:
                            st.accepted += 1
                            out.append(verdict_msg(a.queue, pid, NF_ACCEPT))
                        else:
                            if jitter > 0.0:
                                if a.dist == "normal":
                                    d = rng.gauss(delay, jitter)
                                else:
                                    d = delay - jitter + 2.0 * jitter * rng.random()
                                if d < 0.0:
                                    d = 0.0
                            else:
                                d = delay
                            due = now + d
                            st.accepted += 1
                            if a.reorder:
                                seq += 1
                                heapq.heappush(heap, (due, seq, pid))
                            else:
                                if due < last_due:
                                    due = last_due
                                last_due = due
                                fifo.append((due, pid))
                            st.delay_sum += due - now
                            held = len(fifo) + len(heap)
                            if held > st.max_held:
                                st.max_held = held
                off += (ln + 3) & ~3
        if out:
            try:
                s.send(b"".join(out))
            except OSError as e:
                print("nfq_netem: verdict send failed: %s" % e, file=sys.stderr, flush=True)
            out.clear()

    # shutdown: release everything still held, then unbind
    rest = [pid for _, pid in fifo] + [pid for _, _, pid in heap]
    for i in range(0, len(rest), 256):
        try:
            s.send(b"".join(verdict_msg(a.queue, pid, NF_ACCEPT) for pid in rest[i:i + 256]))
        except OSError:
            pass
    try:
        s.send(nfq_msg(NFQNL_MSG_CONFIG, a.queue, [nla(NFQA_CFG_CMD, struct.pack("=BBH", NFQNL_CFG_CMD_UNBIND, 0, socket.htons(socket.AF_INET)))], NLM_F_REQUEST, 9, socket.AF_UNSPEC))
    except OSError:
        pass
    print(st.line(0), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
