#!/usr/bin/env python3
"""Summarises a browser-lab run directory (bench/netlab/browser.sh) into tables.

    browser_analyze.py OUT_DIR   reads OUT_DIR/runs/*/*/{meta.json,drive.json} and writes
                                 OUT_DIR/results.{json,md}; prints the Markdown

drive.json holds the <qrelay-player> element's attributes sampled every 250 ms: its own
stats (refreshed once a second and on every state change) and the lab's data-lab-*
mirror of the live counters (every 100 ms: frames decoded, state, wall clock).
Definitions:

* window = from the first sample that finds the player playing (lab mirror) to the last
  sample.
* decoded / expected = pictures the decoder gave in the window (lab counter) against
  FPS x window length; fps = their rate.
* dropped = data-frames-dropped at the end (frames not decoded: waiting for a keyframe,
  a stale GOP, or pictures the display passed over).
* p50 / p99 = the element's own data-latency-p50/p99-ms at the end: relay ingest to
  display over the last 3000 pictures shown, i.e. the whole window at 30 fps for up to
  100 s (it includes the first GOP, which a late joiner gets from the relay's cache).
  steady p99 = p99 over every picture shown from STARTUP_MS after the first one on (the
  lab's per-picture log of the same latencies): without the start-up, where a joining
  player is handed the relay's cached GOP (up to 1 s old).
  samp p99 = p99 of the data-latency-ms attribute over the window's samples from
  STARTUP_MS after the first picture (one value a second, each the latest picture's).
* stalled s = sample time spent in state `stalled` (the player's own: no picture for
  1 s while playing), plus time in `connecting`/`error` after the first picture.
  frozen = samples in the window whose decoded counter had not moved since the sample
  1 s earlier (each such sample stands for 250 ms).
* capacity drop: fps and per-picture latency p99 while the link was slow, and after it
  came back; first under = time after the link came back until the first picture under
  RECOVERED_MS; recovered = until every later picture's latency stayed under it (a later
  spike from anything, the machine's load too, counts).

Python 3 standard library only.
"""
import json
import math
import os
import sys

SAMPLE_MS = 250.0
STARTUP_MS = 2000.0
RECOVERED_MS = 300.0


def percentile(values, p):
    if not values:
        return None
    s = sorted(values)
    return s[max(1, math.ceil(p / 100.0 * len(s))) - 1]


def num(attrs, name):
    try:
        v = attrs.get(name, "")
        return float(v) if v != "" else None
    except (TypeError, ValueError):
        return None


def analyze(meta, drive):
    samples = [s for s in drive["samples"] if isinstance(s.get("attrs"), dict)]
    r = {"samples": len(samples), "transport": "", "state": "", "decoded": None, "expected": None,
         "fps": None, "dropped": None, "p50_ms": None, "p99_ms": None, "samp_p99_ms": None,
         "stalled_s": None, "frozen_samples": None, "frozen_s": None, "first_frame_ms": None,
         "reconnects": 0, "error": ""}
    if not samples:
        return r
    last = samples[-1]["attrs"]
    r["transport"] = last.get("data-transport", "")
    r["state"] = last.get("data-state", "")
    r["error"] = last.get("data-error", "")
    r["dropped"] = num(last, "data-frames-dropped")
    r["p50_ms"] = num(last, "data-latency-p50-ms")
    r["p99_ms"] = num(last, "data-latency-p99-ms")
    first = num(last, "data-first-frame-ms")
    r["first_frame_ms"] = first
    if first is None:
        return r
    start = next((i for i, s in enumerate(samples) if s["attrs"].get("data-lab-state") == "playing"), None)
    if start is None:
        return r
    win = [s["attrs"] for s in samples[start:] if num(s["attrs"], "__now") is not None]
    dec = [num(a, "data-lab-decoded") or 0.0 for a in win]
    now = [num(a, "__now") for a in win]
    span_s = (now[-1] - first) / 1000.0
    # Pictures decoded before the first one was shown (the cached GOP) count too.
    r["decoded"] = dec[-1]
    r["expected"] = round(meta["fps"] * span_s)
    r["fps"] = dec[-1] / span_s if span_s > 0 else None
    lat = [num(a, "data-latency-ms") for a in win if num(a, "__now") >= first + STARTUP_MS]
    r["samp_p99_ms"] = percentile([x for x in lat if x is not None], 99)
    pics = []
    for item in (last.get("data-lab-pics") or "").split(","):
        if ":" in item:
            w, v = item.split(":", 1)
            pics.append((float(w), float(v)))
    r["pictures_logged"] = len(pics)
    if pics:
        t_first = pics[0][0]
        r["steady_p99_ms"] = percentile([v for w, v in pics if w >= t_first + STARTUP_MS], 99)
        r["steady_p50_ms"] = percentile([v for w, v in pics if w >= t_first + STARTUP_MS], 50)
    stalled = 0
    prev_state = "playing"
    for a in win:
        st = a.get("data-lab-state") or a.get("data-state", "")
        if st in ("stalled", "connecting", "error"):
            stalled += 1
        if st == "connecting" and prev_state != "connecting":
            r["reconnects"] += 1
        prev_state = st
    r["stalled_s"] = stalled * SAMPLE_MS / 1000.0
    frozen = 0
    j = 0
    for i in range(len(win)):
        while j + 1 < i and now[j + 1] <= now[i] - 1000.0:
            j += 1
        if now[i] - now[j] >= 1000.0 and dec[i] == dec[j]:
            frozen += 1
    r["frozen_samples"] = frozen
    r["frozen_s"] = frozen * SAMPLE_MS / 1000.0
    if meta.get("drop_start_unix_ms"):
        ds, de = meta["drop_start_unix_ms"], meta["drop_end_unix_ms"]
        for name, lo, hi in (("drop", ds, de), ("after", de, math.inf)):
            part = [(num(a, "data-lab-wall"), num(a, "data-lab-decoded"))
                    for a in win if num(a, "data-lab-wall") is not None and lo <= num(a, "data-lab-wall") < hi]
            if len(part) >= 2:
                secs = (part[-1][0] - part[0][0]) / 1000.0
                r[f"{name}_fps"] = (part[-1][1] - part[0][1]) / secs if secs > 0 else None
            r[f"{name}_p99_ms"] = percentile([v for w, v in pics if lo <= w < hi], 99)
        after = [(w, v) for w, v in pics if w >= de]
        if after:
            good = [w for w, v in after if v <= RECOVERED_MS]
            r["first_under_s"] = (good[0] - de) / 1000.0 if good else None
            bad = [w for w, v in after if v > RECOVERED_MS]
            r["recovered_s"] = max(0.0, (bad[-1] - de) / 1000.0) if bad else 0.0
            if bad and bad[-1] == after[-1][0]:
                r["recovered_s"] = None  # never within the run
    return r


def fmt(v, digits=0):
    if v is None:
        return "–"
    return f"{v:.{digits}f}"


def main():
    out = sys.argv[1]
    runs = []
    for case in sorted(os.listdir(os.path.join(out, "runs"))):
        for transport in sorted(os.listdir(os.path.join(out, "runs", case)), reverse=True):
            d = os.path.join(out, "runs", case, transport)
            meta = json.load(open(os.path.join(d, "meta.json")))
            try:
                drive = json.load(open(os.path.join(d, "drive.json")))
            except (OSError, ValueError):
                drive = {"samples": []}
            r = analyze(meta, drive)
            r.update({"case": case, "forced": transport, "meta": meta})
            runs.append(r)
    runs.sort(key=lambda r: r["meta"].get("t0_unix_ms") or 0)
    json.dump(runs, open(os.path.join(out, "results.json"), "w"), indent=1)
    lines = []
    for case in dict.fromkeys(r["case"] for r in runs):
        rs = [r for r in runs if r["case"] == case]
        m = rs[0]["meta"]
        desc = f"RTT {m['rtt_ms']} ms, loss {m['loss_pct']} %, jitter {m['jitter_ms']} ms, {m['rate_mbit']} Mbit/s"
        if m.get("drop_rate_mbit"):
            desc += f", falling to {m['drop_rate_mbit']} Mbit/s for " \
                    f"{(m['drop_end_unix_ms'] - m['drop_start_unix_ms']) / 1000:.0f} s"
        lines += [f"### {case} ({desc})", "",
                  "| transport | decoded / expected | fps | dropped | p50 ms | p99 ms | steady p99 ms "
                  "| samp p99 ms | stalled s | frozen s | first frame ms | reconnects | load |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rs:
            t = r["transport"] or r["forced"]
            if t != r["forced"]:
                t = f"{r['forced']} (got {t or 'none'})"
            lines.append(
                f"| {t} | {fmt(r['decoded'])} / {fmt(r['expected'])} | {fmt(r['fps'], 1)} | {fmt(r['dropped'])} "
                f"| {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | {fmt(r.get('steady_p99_ms'))} | {fmt(r['samp_p99_ms'])} "
                f"| {fmt(r['stalled_s'], 2)} "
                f"| {fmt(r['frozen_s'], 2)} | {fmt(r['first_frame_ms'])} | {r['reconnects']} "
                f"| {r['meta'].get('load1_start')}→{r['meta'].get('load1_end')} |")
        if any("drop_fps" in r for r in rs):
            lines += ["", "| transport | fps while slow | p99 while slow ms | fps after | p99 after ms "
                      f"| first < {RECOVERED_MS:.0f} ms after s | stays < {RECOVERED_MS:.0f} ms after s |", "|---|---|---|---|---|---|---|"]
            for r in rs:
                lines.append(f"| {r['forced']} | {fmt(r.get('drop_fps'), 1)} | {fmt(r.get('drop_p99_ms'))} "
                             f"| {fmt(r.get('after_fps'), 1)} | {fmt(r.get('after_p99_ms'))} | {fmt(r.get('first_under_s'), 1)} "
                             f"| {fmt(r.get('recovered_s'), 1) if r.get('recovered_s') is not None else 'not in the run'} |")
        notes = [f"{r['forced']}: {r['meta']['note']}" for r in rs if r["meta"].get("note")]
        notes += [f"{r['forced']}: ended in state {r['state']} ({r['error']})" for r in rs
                  if r["state"] not in ("playing", "") or (r["error"] and r["state"] != "playing")]
        lines += [""] + [f"- {n}" for n in notes] + ([""] if notes else [])
    md = "\n".join(lines) + "\n"
    open(os.path.join(out, "results.md"), "w").write(md)
    sys.stdout.write(md)


if __name__ == "__main__":
    main()
