#!/usr/bin/env python3
"""Cuts captured RTMP connections (conn-N.c2s / conn-N.s2c from record_seeds.sh) and an
FLV file into seed inputs for every fuzz target, in the input layouts fuzz/src/lib.rs
documents. Usage: make_seeds.py CAPTURE_DIR SEEDS_DIR (SEEDS_DIR is replaced)."""

import os
import shutil
import struct
import sys

HANDSHAKE = 1 + 1536 + 1536  # C0 C1 C2 (or S0 S1 S2)

def one_piece(data):
    """The `pieces` layout with no cut: the stream in one piece."""
    return b"\x00" + data

def cut_pieces(data, cuts):
    """The `pieces` layout with explicit cut lengths (at most 7)."""
    cuts = cuts[:7]
    return bytes([len(cuts)]) + b"".join(struct.pack("<H", c) for c in cuts) + data

def chunk_messages(stream):
    """Minimal RTMP chunk decoder (follows SetChunkSize); yields (csid, ts, type, sid,
    payload). Stops quietly at a truncated tail."""
    chunk_size = 128
    state = {}
    i = 0
    n = len(stream)
    while i < n:
        start = i
        b0 = stream[i]; i += 1
        fmt, csid = b0 >> 6, b0 & 0x3F
        if csid == 0:
            if i + 1 > n: return
            csid = 64 + stream[i]; i += 1
        elif csid == 1:
            if i + 2 > n: return
            csid = 64 + stream[i] + 256 * stream[i + 1]; i += 2
        st = state.setdefault(csid, {"ts": 0, "delta": 0, "len": 0, "type": 0, "sid": 0,
                                     "ext": False, "buf": b"", "left": 0})
        hlen = [11, 7, 3, 0][fmt]
        if i + hlen > n: return
        h = stream[i:i + hlen]; i += hlen
        if fmt <= 2:
            t = int.from_bytes(h[0:3], "big")
            ext = t == 0xFFFFFF
            if fmt <= 1:
                st["len"] = int.from_bytes(h[3:6], "big")
                st["type"] = h[6]
            if fmt == 0:
                st["sid"] = int.from_bytes(h[7:11], "little")
            if ext:
                if i + 4 > n: return
                t = int.from_bytes(stream[i:i + 4], "big"); i += 4
            st["ext"] = ext
            st["ts"] = t if fmt == 0 else (st["ts"] + t) & 0xFFFFFFFF
            st["delta"] = t
            st["left"] = st["len"]; st["buf"] = b""
        else:
            if st["ext"]:
                if i + 4 > n: return
                i += 4
            if st["left"] == 0:
                st["ts"] = (st["ts"] + st["delta"]) & 0xFFFFFFFF
                st["left"] = st["len"]; st["buf"] = b""
        take = min(st["left"], chunk_size)
        if i + take > n: return
        st["buf"] += stream[i:i + take]; i += take
        st["left"] -= take
        if st["left"] == 0:
            payload = st["buf"]
            st["buf"] = b""
            if st["type"] == 1 and len(payload) >= 4:
                chunk_size = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            yield (csid, st["ts"], st["type"], st["sid"], payload)

def main():
    cap, out = sys.argv[1], sys.argv[2]
    if os.path.isdir(out):
        shutil.rmtree(out)
    seeds = {}

    def add(target, name, data):
        seeds.setdefault(target, {})[name] = data

    conns = sorted({f.rsplit(".", 1)[0] for f in os.listdir(cap) if f.startswith("conn-")})
    sessions = {}
    for c in conns:
        c2s = open(os.path.join(cap, c + ".c2s"), "rb").read()
        s2c_path = os.path.join(cap, c + ".s2c")
        s2c = open(s2c_path, "rb").read() if os.path.exists(s2c_path) else b""
        if len(c2s) < HANDSHAKE:
            continue
        role = "publish" if b"\x02\x00\x07publish" in c2s else "play" if b"\x02\x00\x04play" in c2s else None
        if role and role not in sessions:
            sessions[role] = (c2s, s2c)
    if "publish" not in sessions:
        sys.exit("no publish session captured")

    all_msgs = []
    for role, (c2s, s2c) in sorted(sessions.items()):
        chunks = c2s[HANDSHAKE:]
        # handshake: C0 C1 C2 and the first chunk bytes, whole and cut at awkward places.
        add("handshake", f"{role}_c0c1c2", one_piece(c2s[:HANDSHAKE + 64]))
        add("handshake", f"{role}_c0c1c2_cut", cut_pieces(c2s[:HANDSHAKE + 64], [1, 1536, 700, 836]))
        # chunk_decoder: cfg 0 (default limits), re-encode at 128, one piece / cut pieces.
        head = chunks[:12000]
        add("chunk_decoder", f"{role}_c2s", b"\x00\x80" + one_piece(head))
        add("chunk_decoder", f"{role}_c2s_cut", b"\x01\x07" + cut_pieces(head, [5, 12, 100, 1, 3000]))
        add("chunk_decoder", f"{role}_s2c", b"\x00\xff" + one_piece(s2c[HANDSHAKE:HANDSHAKE + 8000]))
        # server_session: synthetic handshake + chunks (ctl 0x06: accept publish and play),
        # and raw mode with the whole captured connection (ctl 0x07).
        add("server_session", f"{role}_chunks", b"\x06" + one_piece(head))
        add("server_session", f"{role}_chunks_reject", b"\x10" + cut_pieces(head, [200, 7, 64]))
        add("server_session", f"{role}_raw", b"\x07" + one_piece(c2s[:HANDSHAKE + 12000]))
        for direction, stream in (("c2s", c2s), ("s2c", s2c)):
            for m in chunk_messages(stream[HANDSHAKE:]):
                all_msgs.append((role, direction, m))

    seen_amf = set()
    per_type = {}
    video = audio = 0
    roundtrip = []
    for role, direction, (csid, ts, type_id, sid, payload) in all_msgs:
        if type_id in (18, 20) and payload not in seen_amf:
            seen_amf.add(payload)
            name = payload[3:3 + int.from_bytes(payload[1:3], "big")].decode("latin1") if payload[:1] == b"\x02" else "x"
            name = "".join(ch for ch in name if ch.isalnum() or ch in "_@") or "x"
            add("amf0", f"{role}_{direction}_{type_id}_{name}_{len(seen_amf)}", payload[:4000])
        k = per_type.get(type_id, 0)
        if k < 4:
            per_type[type_id] = k + 1
            add("message", f"{role}_{direction}_type{type_id}_{k}",
                struct.pack("<BHII", type_id, csid, ts, sid) + payload[:2000])
        if type_id == 9 and video < 8:
            add("codec_inspect", f"video_{video}", payload[:64]); video += 1
        if type_id == 8 and audio < 4:
            add("codec_inspect", f"audio_{audio}", payload[:64]); audio += 1
        if len(roundtrip) < 12 and direction == "c2s" and role == "publish":
            roundtrip.append((csid, ts, type_id, sid, payload[:300]))

    # chunk_roundtrip: u16 chunk size selector, count, then per message csid selector,
    # timestamp mode + u32, type, u32 stream id, u16 length, payload; then schedule.
    def structured(msgs, cs_raw):
        b = struct.pack("<HB", cs_raw, len(msgs) - 1)
        for csid, ts, type_id, sid, payload in msgs:
            sel = (csid - 2) << 2 if csid < 64 else ((csid - 64) << 2) | 1
            b += struct.pack("<HBIBIH", sel, 0, ts, type_id, sid, len(payload)) + payload
        return b
    add("chunk_roundtrip", "publish_start_cs128", structured(roundtrip[:8], 127))
    add("chunk_roundtrip", "publish_start_cs4096", structured(roundtrip[:8], 0x8000 | 255) + bytes(range(64)))
    add("chunk_roundtrip", "publish_start_cs1", structured(roundtrip[:3], 0) + b"\x01\x02\x03" * 20)
    add("chunk_roundtrip", "extended_ts",
        struct.pack("<HB", 9, 1) + struct.pack("<HBIBIH", 4 << 2, 1, 0, 9, 1, 40) + bytes(40)
        + struct.pack("<HBIBIH", 5 << 2, 0, 0x12345678, 8, 1, 30) + bytes(30) + b"\x01\x00\x01\x01")

    flv_data = open(os.path.join(cap, "small.flv"), "rb").read()
    add("flv", "small", b"\x00" + one_piece(flv_data[:60000]))
    add("flv", "small_cut", b"\x00" + cut_pieces(flv_data[:20000], [3, 6, 4, 11, 1, 500]))
    add("flv", "small_tight", b"\x01" + one_piece(flv_data[:4000]))
    # codec_inspect: the first tags' bodies of the file too (sequence headers).
    for name, raw in (("flv_header", flv_data[:13]),):
        add("codec_inspect", name, raw)

    urls = [
        "rtmp://127.0.0.1:1935/live/seed",
        "rtmp://host/live/cam1?token=abc&quic=1",
        "rtmps://example.com:8443/app/sub/key",
        "rtmp+quic://[::1]:1935/live/key?mode=roqr",
        "rtmpq://host/live/key?a=1&mode=tunnel&b",
        "RTMP://Host.Example/live/cam1#frag",
        "rtmp://h:/a/k?x=/y&&z",
    ]
    for i, u in enumerate(urls):
        add("url", f"url_{i}", u.encode())

    total = 0
    for target, files in sorted(seeds.items()):
        d = os.path.join(out, target)
        os.makedirs(d, exist_ok=True)
        for name, data in sorted(files.items()):
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
            total += len(data)
        print(f"{target:16} {len(files):3} seeds {sum(map(len, files.values())):8} bytes")
    print(f"{'total':16} {total:21} bytes")

if __name__ == "__main__":
    main()
