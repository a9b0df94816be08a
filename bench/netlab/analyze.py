#!/usr/bin/env python3
"""Summarises an impairment-lab run directory (bench/netlab/run.sh) into tables.

    analyze.py OUT_DIR        reads OUT_DIR/runs/*/*/{meta.json,arrivals.tsv} and writes
                              OUT_DIR/results.{json,csv,md}; prints the Markdown

Each run's arrivals.tsv is `qrelay play --arrivals`: one line per video picture the
player received, `media_ms  arrival_unix_ms  key`. Definitions (all on the player's
wall clock, which run.sh also used to time the publisher's start and the link changes):

* lateness of a frame = (arrival - media time) - min over the run of (arrival - media
  time): how much later than the best-case frame it arrived. The publisher paces at
  media time, so this is the delay the path added on top of its best moment.
* window = arrivals from SKIP s after the publisher started until it was stopped.
* frames = video pictures arriving in the window, of FPS x window length expected.
* stall = a gap of more than 1 s between consecutive arrivals in the window (the
  window's edges count as arrivals, so a path that stops delivering shows a stall).
* capacity drop: lateness p99 of the frames arriving while the link was slow, how many
  of them arrived in time (lateness at most IN_TIME_MS, the relay's default latency
  budget), and the time after the link was restored until lateness stayed under
  RECOVERED_MS for good.

Python 3 standard library only.
"""
import csv
import json
import math
import os
import sys

STALL_MS = 1000.0
RECOVERED_MS = 200.0
IN_TIME_MS = 1000.0


def percentile(sorted_values, p):
    """Nearest-rank percentile; None for an empty list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def read_arrivals(path):
    frames = []
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            ts, arrival, key = line.split("\t")
            frames.append((int(ts), float(arrival), key.strip() == "1"))
    return frames


def analyze_run(meta, frames):
    t0 = meta["t0_unix_ms"]
    start = t0 + meta["skip_s"] * 1000.0
    end = t0 + meta["duration_s"] * 1000.0
    expected = round((meta["duration_s"] - meta["skip_s"]) * meta["fps"])
    r = {"frames": 0, "expected": expected, "p50_ms": None, "p99_ms": None, "max_ms": None,
         "stalls": 0, "stall_s": 0.0}
    if frames:
        base = min(arrival - ts for ts, arrival, _ in frames)
        late = [(arrival, arrival - ts - base) for ts, arrival, _ in frames]
    else:
        late = []
    window = sorted(x for x in late if start <= x[0] <= end)
    values = sorted(v for _, v in window)
    r["frames"] = len(window)
    r["p50_ms"] = percentile(values, 50)
    r["p99_ms"] = percentile(values, 99)
    r["max_ms"] = values[-1] if values else None
    edges = [start] + [a for a, _ in window] + [end]
    gaps = [b - a for a, b in zip(edges, edges[1:]) if b - a > STALL_MS]
    r["stalls"] = len(gaps)
    r["stall_s"] = round(sum(gaps) / 1000.0, 2)
    if meta.get("drop_start_unix_ms"):
        d0, d1 = meta["drop_start_unix_ms"], meta["drop_end_unix_ms"]
        during = sorted(v for a, v in late if d0 <= a <= d1)
        r["drop_frames"] = len(during)
        r["drop_in_time"] = sum(1 for v in during if v <= IN_TIME_MS)
        r["drop_expected"] = round((d1 - d0) / 1000.0 * meta["fps"])
        r["drop_p99_ms"] = percentile(during, 99)
        after = sorted(x for x in late if d1 <= x[0] <= end)
        bad = [i for i, (_, v) in enumerate(after) if v >= RECOVERED_MS]
        if not after:
            r["recovery_s"] = None
        elif not bad:
            r["recovery_s"] = 0.0
        elif bad[-1] + 1 < len(after):
            r["recovery_s"] = round((after[bad[-1] + 1][0] - d1) / 1000.0, 2)
        else:
            r["recovery_s"] = None  # still late when the run ended
    return r


def fmt_ms(v):
    if v is None:
        return "–"
    if v >= 1000.0:
        return "%.1f s" % (v / 1000.0)
    return "%d ms" % round(v)


def fmt_stalls(r):
    return "0" if not r["stalls"] else "%d (%.1f s)" % (r["stalls"], r["stall_s"])


def case_label(m):
    if m.get("drop_start_unix_ms") is not None or m["case"] == "drop":
        return "drop: %g ms RTT, %g %% loss, %g → %g Mbit/s for %g s" % (
            m["rtt_ms"], m["loss_pct"], m["rate_mbit"], m["drop_rate_mbit"], m["drop_for_s"])
    return "%g ms RTT, %g %% loss" % (m["rtt_ms"], m["loss_pct"])


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    runs_dir = os.path.join(out, "runs")
    rows = []
    for case in sorted(os.listdir(runs_dir)):
        for transport in sorted(os.listdir(os.path.join(runs_dir, case))):
            d = os.path.join(runs_dir, case, transport)
            meta_path = os.path.join(d, "meta.json")
            if not os.path.exists(meta_path):
                continue
            with open(meta_path) as f:
                meta = json.load(f)
            row = dict(meta)
            arrivals = os.path.join(d, "arrivals.tsv")
            if not meta.get("skipped") and os.path.exists(arrivals):
                row.update(analyze_run(meta, read_arrivals(arrivals)))
            rows.append(row)
    order = {t: i for i, t in enumerate(["tcp-bbr", "tcp-cubic", "tunnel-bbr", "tunnel-cubic", "roqr"])}
    rows.sort(key=lambda r: (r["case"] == "drop", r["rtt_ms"], r["loss_pct"], order.get(r["transport"], 99)))

    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(rows, f, indent=1)
    fields = ["case", "rtt_ms", "loss_pct", "jitter_ms", "rate_mbit", "transport", "tcp_cc", "quic_cc", "load1",
              "frames", "expected", "p50_ms", "p99_ms", "max_ms", "stalls", "stall_s",
              "drop_rate_mbit", "drop_for_s", "drop_frames", "drop_in_time", "drop_expected", "drop_p99_ms",
              "recovery_s",
              "note"]
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})

    lines = []
    steady = [r for r in rows if r["case"] != "drop"]
    drops = [r for r in rows if r["case"] == "drop"]
    if steady:
        m = steady[0]
        lines += ["Link %g Mbit/s, %g ms jitter; runs of %g s, first %g s skipped; lateness relative "
                  "to the run's best-case frame." % (m["rate_mbit"], m["jitter_ms"], m["duration_s"], m["skip_s"]),
                  "",
                  "| path | transport | frames (of expected) | lateness p50 | p99 | max | stalls > 1 s | note |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in steady:
            if r.get("skipped"):
                lines.append("| %s | %s | – | – | – | – | – | skipped: %s |" % (case_label(r), r["transport"], r.get("note", "")))
                continue
            lines.append("| %s | %s | %d/%d | %s | %s | %s | %s | %s |" % (
                case_label(r), r["transport"], r["frames"], r["expected"], fmt_ms(r["p50_ms"]),
                fmt_ms(r["p99_ms"]), fmt_ms(r["max_ms"]), fmt_stalls(r), r.get("note", "")))
    if drops:
        m = drops[0]
        lines += ["", "Capacity drop: the link falls to %g Mbit/s from %g s to %g s of a %g s run, then is "
                  "restored. Recovery = time after the restore until lateness stays under %d ms "
                  "(– = not within the run)." % (m["drop_rate_mbit"], m["drop_at_s"], m["drop_at_s"] + m["drop_for_s"],
                                                 m["duration_s"], RECOVERED_MS),
                  "",
                  "| path | transport | frames (of expected) | lateness p50 | p99 | frames during drop | in time (≤ %d ms) | p99 during drop | recovery | stalls > 1 s | note |" % IN_TIME_MS,
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in drops:
            if r.get("skipped"):
                lines.append("| %s | %s | – | – | – | – | – | – | – | – | skipped: %s |" % (case_label(r), r["transport"], r.get("note", "")))
                continue
            rec = "–" if r.get("recovery_s") is None else "%.1f s" % r["recovery_s"]
            lines.append("| %s | %s | %d/%d | %s | %s | %d/%d | %d | %s | %s | %s | %s |" % (
                case_label(r), r["transport"], r["frames"], r["expected"], fmt_ms(r["p50_ms"]),
                fmt_ms(r["p99_ms"]), r["drop_frames"], r["drop_expected"], r["drop_in_time"],
                fmt_ms(r["drop_p99_ms"]), rec, fmt_stalls(r), r.get("note", "")))
    transports = []
    for r in rows:
        if r["transport"] not in transports and not r.get("skipped"):
            transports.append(r["transport"])
    if steady and transports:
        lines += ["", "Summary: lateness p99 (frames delivered, % of expected); one row per path.", "",
                  "| path | " + " | ".join(transports) + " |", "|---|" + "---|" * len(transports)]
        cells = {(case_label(r), r["transport"]): r for r in steady if not r.get("skipped")}
        for label in dict.fromkeys(case_label(r) for r in steady):
            row = []
            for t in transports:
                r = cells.get((label, t))
                row.append("–" if r is None else "%s (%d %%)" % (fmt_ms(r["p99_ms"]), round(100.0 * r["frames"] / r["expected"])))
            lines.append("| %s | %s |" % (label, " | ".join(row)))
    loads = [r["load1"] for r in rows if r.get("load1") is not None]
    if loads:
        lines += ["", "Machine load (1-min average) at the end of each run: %.2f to %.2f." % (min(loads), max(loads))]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
