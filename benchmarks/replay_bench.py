"""Offline replay throughput at national scale: the columnar engine against the reference
Processor and a plain pandas pipeline, in the same run (JSON out).

    python benchmarks/replay_bench.py [--events 10000000] [--workdir DIR]
                                      [--skip-pandas] [--skip-reference] [--skip-rules]

Generates an England-wide synthetic log (~87k events per simulated day), then in separate
processes (so each peak RSS is its own): `run_offline` with the columnar engine (the default
of `callstream replay --offline`), the same with the shipped alert rules, `run_offline` with
the reference engine (the live worker's `Processor`, one event at a time), and a
straightforward pandas pipeline computing the same summary (read JSON Lines, join per call,
exact quantiles). Prints one JSON object: events/s and peak RSS of each, the ratios, whether
the columnar and reference output files are byte-identical, whether the summaries agree with
pandas (counts and means exactly, centiles within 1%), and the issue's targets."""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EVENTS_PER_DAY = 87_000
OUTPUTS = ("summary.json", "stats.jsonl", "dead_letters.jsonl", "alerts.jsonl")

REPLAY = r"""
import json, sys, time
from streams.replay import run_offline
from streams.settings import ProcessingSettings
engine, rules = sys.argv[3], None
settings = ProcessingSettings()
if sys.argv[4] == "rules":
    from streams.replay import load_settings_and_rules
    settings, rules = load_settings_and_rules(None, None)
t = time.perf_counter()
s = run_offline([sys.argv[1]], sys.argv[2], settings, rules, progress=False, engine=engine)
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


def figures(res: dict, n_lines: int) -> dict:
    if "error" in res:
        return res
    return {"seconds": round(res["seconds"], 2), "events_per_s": round(n_lines / res["seconds"]),
            "peak_rss_mb": round(res["peak_rss_mb"], 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--skip-pandas", action="store_true")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--skip-rules", action="store_true")
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

    # load (or, the very first time, compile) the engine's Numba kernels outside the timing
    warm = work / "warm.jsonl"
    with open(log, "rb") as src, open(warm, "wb") as dst:
        dst.writelines(line for _, line in zip(range(20_000), src))
    for mode in ("none", "rules"):
        run_child(REPLAY, str(warm), str(work / "warm-out"), "columnar", mode)

    result = {
        "benchmark": "offline replay", "machine": f"{os.cpu_count()} cores",
        "load_average_before": os.getloadavg()[0],
        "events": n_lines, "simulated_days": round(days, 1), "log_bytes": log.stat().st_size,
        "generate_s": round(gen_s, 1),
    }
    ours = run_child(REPLAY, str(log), str(work / "columnar"), "columnar", "none")
    result["columnar"] = figures(ours, n_lines)
    if "error" not in ours:
        result["columnar"]["stats_records"] = ours["summary"]["stats_records"]
    if not args.skip_rules:
        with_rules = run_child(REPLAY, str(log), str(work / "columnar-rules"), "columnar", "rules")
        result["columnar_with_shipped_rules"] = figures(with_rules, n_lines)
        if "error" not in with_rules:
            result["columnar_with_shipped_rules"]["alerts"] = with_rules["summary"]["alerts"]
    if not args.skip_reference:
        ref = run_child(REPLAY, str(log), str(work / "reference"), "reference", "none")
        result["reference"] = figures(ref, n_lines)
        if "error" not in ours and "error" not in ref:
            result["speedup_vs_reference"] = round(ref["seconds"] / ours["seconds"], 2)
            result["outputs_identical_to_reference"] = all(
                filecmp.cmp(work / "columnar" / f, work / "reference" / f, shallow=False)
                for f in OUTPUTS)
    if not args.skip_pandas:
        theirs = run_child(PANDAS, str(log))
        result["pandas"] = figures(theirs, n_lines)
        if "error" not in ours and "error" not in theirs:
            result["speedup_vs_pandas"] = round(theirs["seconds"] / ours["seconds"], 2)
            result["summary_check"] = agree(ours["summary"], theirs["summary"])
    result["load_average_after"] = os.getloadavg()[0]
    if "error" not in ours:
        targets = {"events_per_s >= 500000": result["columnar"]["events_per_s"] >= 500_000,
                   "peak_rss <= 1 GiB": result["columnar"]["peak_rss_mb"] <= 1024}
        if "speedup_vs_pandas" in result:
            targets[">= 3x pandas"] = result["speedup_vs_pandas"] >= 3
        result["targets"] = targets
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
