"""Offline replay throughput at national scale: the columnar engine against the reference
Processor and a plain pandas pipeline, in the same run (JSON out).

    python benchmarks/replay_bench.py [--events 10000000] [--workdir DIR] [--repeat N]
                                      [--skip-pandas] [--skip-reference] [--skip-rules]

Generates an England-wide synthetic log (~87k events per simulated day), then in separate
processes (so each peak RSS is its own): `run_offline` with the columnar engine (the default
of `callstream replay --offline`), the same with the shipped alert rules, `run_offline` with
the reference engine (the live worker's `Processor`, one event at a time), and a
straightforward pandas pipeline computing the same summary (read JSON Lines, join per call,
exact quantiles). Prints one JSON object: events/s and peak RSS of each, the ratios, whether
the columnar and reference output files are byte-identical, whether the summaries agree with
pandas (counts and means exactly, centiles within 1%), and the issues' targets.

The rules' cost is `rules_share` = (with rules - without) / with rules, from the two columnar
runs, which go back to back (in alternating order, against drift), after the log has been
read once into the page cache and replayed once untimed (the first full-size runs were the
slowest); `--repeat N` runs that pair N times and reports the median pair, with every
pair's share, the share from each variant's best time, and the CPU-time shares. Beside
them, timed inside each run with rules (no second run's noise enters):
`rules_share_in_process`, the part of the replay's own wall time spent on the rules'
work in its process (handing segments to the rules' process, or evaluating them itself on
a small input, waiting for and writing their alerts, capturing what they read); and
`rules_cpu_share`, the CPU the rules use wherever it runs (that work plus the whole of the
rules' process, its start-up included) over both processes' CPU. enters. Both variants use the same (default) processing settings."""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EVENTS_PER_DAY = 87_000
OUTPUTS = ("summary.json", "stats.jsonl", "dead_letters.jsonl", "alerts.jsonl")

REPLAY = r"""
import json, resource, sys, time
from streams.replay import run_offline
from streams.settings import ProcessingSettings
engine, rules = sys.argv[3], None
settings = ProcessingSettings()
spent = [0.0, 0.0, 0]          # the rules' wall and CPU seconds in this process; depth
if sys.argv[4] == "rules":
    from streams.replay import load_settings_and_rules
    settings, rules = load_settings_and_rules(None, None)
    # the rules' own work in the replay's process, timed inside the run: starting their
    # process and handing it the segments (or evaluating them here, on a small input),
    # waiting for its alerts and writing them, the capture of what they read
    import streams.fast.engine as E
    import streams.fast.rule_stage as R
    def timed(real):
        def run(*args):
            spent[2] += 1
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return real(*args)
            finally:
                spent[2] -= 1
                if not spent[2]:            # outermost only
                    spent[0] += time.perf_counter() - t0
                    spent[1] += time.process_time() - c0
        return run
    for cls, names in ((R.RulesProcess, ("__init__", "submit", "finish")),
                       (R.InlineRules, ("__init__", "submit")),
                       (E._Capture, ("slots",))):
        for name in names:
            setattr(cls, name, timed(getattr(cls, name)))
    E._Capture.keeping = classmethod(timed(E._Capture.keeping.__func__))
    E._last_call_changes = timed(E._last_call_changes)
t, cpu = time.perf_counter(), time.process_time()
s = run_offline([sys.argv[1]], sys.argv[2], settings, rules, progress=False, engine=engine)
el, cpu = time.perf_counter() - t, time.process_time() - cpu
child = resource.getrusage(resource.RUSAGE_CHILDREN)   # the rules' process, once it is done
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(json.dumps({"seconds": el, "cpu_seconds": cpu, "rules_seconds": spent[0],
                  "rules_cpu_seconds": spent[1],
                  "child_cpu_seconds": child.ru_utime + child.ru_stime,
                  "child_peak_rss_mb": child.ru_maxrss / 1024,
                  "peak_rss_mb": hwm / 1024, "summary": s}))
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
    out = {"seconds": round(res["seconds"], 2), "events_per_s": round(n_lines / res["seconds"]),
           "peak_rss_mb": round(res["peak_rss_mb"], 1)}
    if "cpu_seconds" in res:
        out["cpu_seconds"] = round(res["cpu_seconds"], 2)
    return out


def best(runs: list[dict]) -> dict:
    """The fastest of repeated runs (the others carry other jobs' time), or the first error."""
    ok = [r for r in runs if "error" not in r]
    return min(ok, key=lambda r: r["seconds"]) if ok else runs[0]


def share(without: float, with_rules: float) -> float:
    """The part of the replay with rules spent on the rules."""
    return round((with_rules - without) / with_rules, 4)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--skip-pandas", action="store_true")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--skip-rules", action="store_true")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the columnar pair (without, with rules) this many times")
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

    # warm-up bias: the first full-size runs were the slowest (log pages not yet cached,
    # the machine settling), so read the log through once, then replay it once untimed
    t = time.perf_counter()
    with open(log, "rb", buffering=0) as f:
        while f.read(1 << 23):
            pass
    read_s = time.perf_counter() - t
    if not args.skip_rules:
        run_child(REPLAY, str(log), str(work / "warm-out"), "columnar", "none")

    result = {
        "benchmark": "offline replay", "machine": f"{os.cpu_count()} cores",
        "load_average_before": os.getloadavg()[0],
        "events": n_lines, "simulated_days": round(days, 1), "log_bytes": log.stat().st_size,
        "generate_s": round(gen_s, 1), "log_read_s": round(read_s, 1),
        "untimed_full_runs_first": 0 if args.skip_rules else 1,
    }
    plain_runs, rules_runs = [], []
    for i in range(max(args.repeat, 1)):
        # each pair back to back, in alternating order: whichever goes second finds more of
        # the log in the page cache
        pair = [("none", plain_runs, "columnar"), ("rules", rules_runs, "columnar-rules")]
        for mode, runs, out in (pair if i % 2 == 0 else pair[::-1]):
            if mode == "none" or not args.skip_rules:
                runs.append(run_child(REPLAY, str(log), str(work / out), "columnar", mode))
    ours = best(plain_runs)
    result["columnar"] = figures(ours, n_lines)
    if "error" not in ours:
        result["columnar"]["stats_records"] = ours["summary"]["stats_records"]
    if not args.skip_rules:
        with_rules = best(rules_runs)
        result["columnar_with_shipped_rules"] = figures(with_rules, n_lines)
        if "error" not in with_rules:
            result["columnar_with_shipped_rules"]["alerts"] = with_rules["summary"]["alerts"]
        pairs = [(a, b) for a, b in zip(plain_runs, rules_runs)
                 if "error" not in a and "error" not in b]
        if pairs:
            each = [share(a["seconds"], b["seconds"]) for a, b in pairs]
            # timed inside each run with rules (no second run's noise in it): the part of
            # the replay's own time spent on the rules, waiting for them included
            inside = [round(b["rules_seconds"] / b["seconds"], 4) for _, b in pairs]
            # and the CPU they use, wherever it runs: their work in the replay's process plus
            # their process's (its start-up included), over both processes' CPU
            cpu_share = [round((b["rules_cpu_seconds"] + b["child_cpu_seconds"])
                               / (b["cpu_seconds"] + b["child_cpu_seconds"]), 4)
                         for _, b in pairs]
            # the median pair: one run that another job slowed (or sped up, by slowing its
            # partner) does not decide it
            result["rules_share"] = statistics.median(each)
            result["rules_share_each_pair"] = each
            result["rules_share_best_times"] = share(ours["seconds"], with_rules["seconds"])
            result["rules_share_cpu_each_pair"] = [
                share(a["cpu_seconds"], b["cpu_seconds"] + b["child_cpu_seconds"])
                for a, b in pairs]
            result["rules_share_in_process"] = inside
            result["rules_share_in_process_median"] = statistics.median(inside)
            result["rules_cpu_share"] = cpu_share
            result["rules_cpu_share_median"] = statistics.median(cpu_share)
            result["rules_process_peak_rss_mb"] = max(round(b["child_peak_rss_mb"], 1)
                                                      for _, b in pairs)
            result["runs_seconds_cpu"] = {
                "columnar": [[round(a["seconds"], 2), round(a["cpu_seconds"], 2)]
                             for a, _ in pairs],
                "with_rules (s, cpu, rules s, rules cpu, rules process cpu)": [
                    [round(b["seconds"], 2), round(b["cpu_seconds"], 2),
                     round(b["rules_seconds"], 2), round(b["rules_cpu_seconds"], 2),
                     round(b["child_cpu_seconds"], 2)] for _, b in pairs]}
            result["outputs_identical_with_rules"] = all(
                filecmp.cmp(work / "columnar" / f, work / "columnar-rules" / f, shallow=False)
                for f in ("stats.jsonl", "dead_letters.jsonl"))
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
        if "rules_share" in result:
            targets["rules <= 10% of replay time"] = result["rules_share"] <= 0.10
            targets["rules <= 10% of replay time (in process)"] = \
                result["rules_share_in_process_median"] <= 0.10
        result["targets"] = targets
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
