"""Offline replay throughput at national scale, against a plain pandas pipeline (JSON out).

    python benchmarks/replay_bench.py [--events 10000000] [--workdir DIR] [--skip-pandas]

Generates an England-wide synthetic log (~87k events per simulated day), then in separate
processes (so each peak RSS is its own): `callstream replay --offline` through the real core,
and a straightforward pandas pipeline computing the same summary (read JSON Lines, join per
call, exact quantiles). Prints one JSON object: events/s, peak RSS, the ratio, and whether
the two summaries agree (counts and means exactly, centiles within 1%)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EVENTS_PER_DAY = 87_000

REPLAY = r"""
import json, sys, time
from streams.replay import run_offline
from streams.settings import ProcessingSettings
t = time.perf_counter()
s = run_offline([sys.argv[1]], sys.argv[2], ProcessingSettings(), progress=False)
el = time.perf_counter() - t
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(json.dumps({"seconds": el, "peak_rss_mb": hwm / 1024, "summary": s}))
"""

PANDAS = r"""
import json, sys, time
import numpy as np, pandas as pd
t = time.perf_counter()
cols = ["type", "call_id", "ts", "trust", "answered_by", "category", "disposition", "transport_capable"]
parts = []
for chunk in pd.read_json(sys.argv[1], lines=True, chunksize=1_000_000, dtype=False):
    chunk = chunk.reindex(columns=cols)
    chunk["ts"] = pd.to_datetime(chunk["ts"], utc=True, format="ISO8601").dt.as_unit("ms").astype("int64")
    parts.append(chunk)
df = pd.concat(parts, ignore_index=True)
rec = df[df.type == "call_received"].drop_duplicates("call_id").set_index("call_id")
tri = df[df.type == "triaged"].sort_values("ts")
last = tri.groupby("call_id").last()
first_tri = tri.groupby("call_id")["ts"].min()
arr = df[df.type == "crew_arrived"]
first_arr = arr.groupby("call_id")["ts"].min()
tc = arr[arr.transport_capable.fillna(True).astype(bool)].groupby("call_id")["ts"].min()
calls = rec[["ts", "trust", "answered_by"]].rename(columns={"ts": "recv"})
calls = calls.join(last[["category", "disposition"]]).join(first_tri.rename("tri"))
calls = calls.join(first_arr.rename("arr")).join(tc.rename("tc"))
redirect_recv = calls.answered_by.notna() & (calls.answered_by != calls.trust)
disp = calls.disposition.fillna("dispatch")
ht = (~redirect_recv) & (disp == "hear_and_treat")
redirected = redirect_recv | ((~redirect_recv) & (disp == "redirect"))
last_tri = tri.groupby("call_id")["ts"].max()
calls = calls.join(last_tri.rename("tri_last"))
# callstream releases calls still open 24 h after their first event as incomplete: same here
first_ev = calls[["recv", "tri", "arr"]].min(axis=1)
done_ev = calls[["recv", "tri_last", "arr"]].max(axis=1)
done_ev = done_ev - done_ev % 60_000
d = calls[(~redirect_recv) & (disp == "dispatch") & calls.arr.notna()
          & (first_ev + 86_400_000 > done_ev)].copy()
cap = np.where(d.category == "C1", 30_000, 240_000)
d["start"] = np.minimum(d.tri, d.recv + cap)
d["rt"] = d.arr - d.start
out = {"calls": int(len(calls)), "hear_and_treat": int(ht.sum()), "redirected": int(redirected.sum()), "categories": {}}
def stats(v):
    v = np.asarray(v, dtype=np.int64)
    return {"count": int(len(v)), "mean_s": round(int(v.sum()) / len(v) / 1000, 3),
            **{k: float(np.quantile(v, q, method="lower")) / 1000 for k, q in (("p50_s", .5), ("p90_s", .9), ("p99_s", .99))},
            "max_s": int(v.max()) / 1000}
for cat in ("C1", "C2", "C3", "C4"):
    out["categories"][cat] = stats(d.rt[d.category == cat])
c1 = d[(d.category == "C1") & d.tc.notna()]
out["categories"]["C1T"] = stats(c1.tc - c1.start)
el = time.perf_counter() - t
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(json.dumps({"seconds": el, "peak_rss_mb": hwm / 1024, "summary": out}))
"""


def run_child(code: str, *args: str) -> dict:
    """Run in a fresh interpreter; peak RSS is the child's own VmHWM (reset by exec, unlike
    ru_maxrss, which a child inherits from a large parent)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def agree(ours: dict, theirs: dict) -> dict:
    problems = []
    for key in ("calls", "hear_and_treat", "redirected"):
        if ours[key] != theirs[key]:
            problems.append(f"{key}: {ours[key]} != {theirs[key]}")
    for cat, t in theirs["categories"].items():
        o = ours["categories"][cat]
        if o["count"] != t["count"] or o["mean_s"] != t["mean_s"]:
            problems.append(f"{cat} count/mean {o['count']}/{o['mean_s']} != {t['count']}/{t['mean_s']}")
        for k in ("p50_s", "p90_s", "p99_s"):
            if abs(o[k] - t[k]) > 0.01 * t[k] + 0.001:
                problems.append(f"{cat} {k} {o[k]} vs exact {t[k]}")
    return {"agree": not problems, "problems": problems[:10]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--skip-pandas", action="store_true")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="replay-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    days = args.events / EVENTS_PER_DAY
    log = work / f"england-{args.events}.jsonl"
    t = time.perf_counter()
    if not log.exists():
        # generate in a child too, so this process stays small
        code = ("import sys; from producers.simulate import england, generate, write_jsonl; "
                "from streams.timefmt import parse_ts; write_jsonl(generate(england(), "
                "parse_ts('2026-01-01T00:00:00.000Z'), float(sys.argv[1]), seed=42), sys.argv[2])")
        subprocess.run([sys.executable, "-c", code, str(days), str(log)], check=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    gen_s = time.perf_counter() - t
    n_lines = sum(1 for _ in open(log, "rb"))

    ours = run_child(REPLAY, str(log), str(work / "out"))
    result = {
        "benchmark": "offline replay", "machine": f"{os.cpu_count()} cores",
        "events": n_lines, "simulated_days": round(days, 1), "log_bytes": log.stat().st_size,
        "generate_s": round(gen_s, 1),
    }
    if "error" in ours:
        result["callstream"] = ours
    else:
        result["callstream"] = {"seconds": round(ours["seconds"], 2),
                                "events_per_s": round(n_lines / ours["seconds"]),
                                "peak_rss_mb": round(ours["peak_rss_mb"], 1),
                                "stats_records": ours["summary"]["stats_records"]}
    if not args.skip_pandas:
        theirs = run_child(PANDAS, str(log))
        if "error" in theirs:
            result["pandas"] = theirs
        else:
            result["pandas"] = {"seconds": round(theirs["seconds"], 2),
                                "events_per_s": round(n_lines / theirs["seconds"]),
                                "peak_rss_mb": round(theirs["peak_rss_mb"], 1)}
            if "error" not in ours:
                result["speedup_vs_pandas"] = round(theirs["seconds"] / ours["seconds"], 2)
                result["summary_check"] = agree(ours["summary"], theirs["summary"])
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
