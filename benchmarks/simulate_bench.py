"""Simulator speed: a calibrated month of England to a file, against a plain Python baseline.

    python benchmarks/simulate_bench.py [--month 2026-01] [--workdir DIR]

* `callstream simulate --like england --month M --out FILE` (in-process, the same calls):
  calibration + vectorised generation, rendering and writing, plain and gzip;
* baseline: a straightforward generator - per call `random` draws and a `json.dumps` per
  event - run for one simulated day of the same volume, its events/s applied to the month.

Prints one JSON object: seconds and events/s per stage, the target (< 30 s for the month to a
plain file) and the ratio to the baseline."""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from producers.simulate import like, simulate, write_jsonl  # noqa: E402
from streams.timefmt import format_ts, parse_ts  # noqa: E402


def baseline(calls: int, path: Path, seed: int = 1) -> tuple[int, float]:
    """One day the obvious way: a loop over calls, a dict and json.dumps per event."""
    rnd = random.Random(seed)
    start = parse_ts("2026-01-01T00:00:00Z")
    t0 = time.perf_counter()
    n = 0
    with open(path, "w") as f:
        for i in range(calls):
            recv = start + int(rnd.random() * 86_400_000)
            cid = f"B-{i:08d}"
            events = [{"type": "call_received", "call_id": cid, "ts": format_ts(recv),
                       "trust": "LAS"}]
            tri = recv + int(rnd.lognormvariate(3.5, 0.6) * 1000)
            if rnd.random() < 0.19:
                events.append({"type": "triaged", "call_id": cid, "ts": format_ts(tri),
                               "trust": "LAS", "disposition": "hear_and_treat"})
            else:
                cat = rnd.choices(("C1", "C2", "C3", "C4"), (0.13, 0.66, 0.2, 0.01))[0]
                events.append({"type": "triaged", "call_id": cid, "ts": format_ts(tri),
                               "trust": "LAS", "category": cat, "disposition": "dispatch"})
                at = tri + int(rnd.lognormvariate(7.0, 0.8) * 1000)
                for k in range(1 + (rnd.random() < 0.4)):
                    events.append({"type": "crew_arrived", "call_id": cid,
                                   "ts": format_ts(at + k * 300_000), "trust": "LAS",
                                   "resource_id": f"LAS-A{rnd.randint(1, 999):04d}",
                                   "transport_capable": rnd.random() < 0.85})
            events.sort(key=lambda e: e["ts"])
            for e in events:
                f.write(json.dumps(e) + "\n")
            n += len(events)
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--month", default="2026-01")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="simulate-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    year, mon = (int(x) for x in args.month.split("-"))
    import calendar
    days = calendar.monthrange(year, mon)[1]
    start = parse_ts(f"{args.month}-01T00:00:00Z")

    out = {"benchmark": "simulate a month of England", "machine": f"{os.cpu_count()} cores",
           "month": args.month}
    for name, path in (("plain", work / "england.jsonl"), ("gzip", work / "england.jsonl.gz")):
        t0 = time.perf_counter()
        trusts = like("england", args.month)
        t1 = time.perf_counter()
        log = simulate(trusts, start, days, seed=1)
        t2 = time.perf_counter()
        n = write_jsonl(log.lines(), str(path))
        t3 = time.perf_counter()
        out[name] = {"records": n, "calls": log.counts["calls"], "bytes": path.stat().st_size,
                     "calibrate_s": round(t1 - t0, 2), "generate_s": round(t2 - t1, 2),
                     "render_write_s": round(t3 - t2, 2), "total_s": round(t3 - t0, 2),
                     "events_per_s": round(n / (t3 - t0))}
        del log
    calls_per_day = out["plain"]["calls"] / days
    n, el = baseline(int(calls_per_day), work / "baseline-day.jsonl")
    out["baseline_one_day"] = {"records": n, "seconds": round(el, 2),
                               "events_per_s": round(n / el),
                               "month_estimate_s": round(out["plain"]["records"] / (n / el), 1)}
    out["target_s"] = 30
    out["target_met"] = out["plain"]["total_s"] < 30
    out["ratio_vs_baseline"] = round(out["plain"]["events_per_s"] / (n / el), 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
