"""Quantile-sketch benchmark: streams.sketch.QuantileSketch against the Python-accessible peers.

    .venv/bin/python benchmarks/sketch_bench.py            # 10^7 values (about a minute)
    .venv/bin/python benchmarks/sketch_bench.py --quick    # 10^6 values, fewer repeats

Prints one JSON object on stdout.  Peers (install with ``pip install -e '.[bench]'``) are
measured only if importable; a peer that fails gets an ``"error"`` entry instead.

Measured, on the same lognormal-mixture response times (seconds):
* batch insert values/s (one call with the whole array; peers without a batch API: null);
* per-value ``add`` values/s (a Python loop over the first ``--per-value-n`` values);
* warm p99 query latency (µs; ``quantile(0.99)`` repeatedly on an unchanged sketch);
* merge of 60 one-minute sketches of 10^4 values each into an empty sketch (ms);
* serialized bytes of that merged hour;
* worst relative error at p50/p90/p99/p99.9 against ``numpy.quantile(method="lower")``
  (whole data set; after the 60-way merge; and on other distributions);
* first-call JIT cost with a fresh and with a warm Numba cache (subprocesses);
* peak RSS of the benchmark process.
Timings repeat a few times; "best" and "median" are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

QS = (0.5, 0.9, 0.99, 0.999)
HDR_UNIT = 1e-6  # HdrHistogram records integers: microseconds


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------


def lognormal_mixture(n: int, seed: int = 42) -> np.ndarray:
    """Ambulance response times (s): 60 % lognormal(median 7 min, s=0.5), 35 % lognormal
    (median 25 min, s=0.9), 5 % lognormal(median 2.5 h, s=1.2): a heavy right tail."""
    rng = np.random.default_rng(seed)
    w = rng.random(n)
    return np.where(w < 0.6, rng.lognormal(np.log(420), 0.5, n),
                    np.where(w < 0.95, rng.lognormal(np.log(1500), 0.9, n),
                             rng.lognormal(np.log(9000), 1.2, n)))


def other_distributions(n: int, seed: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.lognormal(5, 2, n)
    return {
        "exponential": rng.exponential(600.0, n),
        "pareto_a1.1": (rng.pareto(1.1, n) + 1.0) * 60.0,
        "constant": np.full(n, 437.5),
        "uniform_int_0_3600": rng.integers(0, 3600, n).astype(np.float64),
        "sorted_ascending": np.sort(x),
        "sorted_descending": np.sort(x)[::-1].copy(),
        "huge_range_1e-3_1e7": 10.0 ** rng.uniform(-3, 7, n),
    }


# ---------------------------------------------------------------------------------------
# adapters: a uniform face on every sketch
# ---------------------------------------------------------------------------------------


class Ours:
    name = "callstream"

    def __init__(self):
        from streams.sketch import QuantileSketch, warm_up

        warm_up()
        self.cls = QuantileSketch

    def make(self):
        return self.cls(0.01)

    def batch(self, s, x):
        s.add_many(x)

    def per_value(self, s, values_list):
        add = s.add
        for v in values_list:
            add(v)
        s.count  # flush the add buffer: include its cost

    def quantile(self, s, q):
        return s.quantile(q)

    def merge(self, acc, other):
        acc.merge(other)

    def serialize(self, s):
        return s.to_bytes()

    config = "QuantileSketch(relative_accuracy=0.01), 2048 buckets"


class DD:
    name = "ddsketch"
    batch = None

    def __init__(self):
        import ddsketch

        self.mod = ddsketch
        self.version = getattr(ddsketch, "__version__", None) or _dist_version("ddsketch")

    def make(self):
        return self.mod.DDSketch(relative_accuracy=0.01)

    def per_value(self, s, values_list):
        add = s.add
        for v in values_list:
            add(v)

    def quantile(self, s, q):
        return s.get_quantile_value(q)

    def merge(self, acc, other):
        acc.merge(other)

    def serialize(self, s):
        try:
            from ddsketch.pb.proto import DDSketchProto

            return DDSketchProto.to_proto(s).SerializeToString()
        except ImportError:
            self.serialize_note = "pickle (protobuf not installed)"
            return pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL)

    config = "DDSketch(relative_accuracy=0.01) (pure Python, unbounded dense store)"


class KLL:
    name = "datasketches_kll"

    def __init__(self):
        import datasketches

        self.mod = datasketches
        self.version = _dist_version("datasketches")

    def make(self):
        return self.mod.kll_doubles_sketch(200)

    def batch(self, s, x):
        s.update(x)

    def per_value(self, s, values_list):
        up = s.update
        for v in values_list:
            up(v)

    def quantile(self, s, q):
        return s.get_quantile(q)

    def merge(self, acc, other):
        acc.merge(other)

    def serialize(self, s):
        return s.serialize()

    config = "kll_doubles_sketch(k=200) (C++)"


class FastDigest:
    name = "fastdigest"

    def __init__(self):
        import fastdigest

        self.mod = fastdigest
        self.version = _dist_version("fastdigest")

    def make(self):
        return self.mod.TDigest()

    def batch(self, s, x):
        s.batch_update(x)

    def per_value(self, s, values_list):
        up = s.update
        for v in values_list:
            up(v)

    def quantile(self, s, q):
        return s.quantile(q)

    def merge(self, acc, other):
        acc.merge_inplace(other)

    def serialize(self, s):
        return s.to_bytes()

    config = "TDigest(max_centroids=1000) (Rust t-digest)"


class Hdr:
    name = "hdrhistogram"
    batch = None

    def __init__(self):
        from hdrh.histogram import HdrHistogram

        self.cls = HdrHistogram
        self.version = _dist_version("hdrhistogram")

    def make(self):
        return self.cls(1, 10**13, 2)  # 1 µs .. 1e7 s, 2 significant digits

    def prepare(self, values_list):
        return [int(v / HDR_UNIT) for v in values_list]

    def per_value(self, s, ints):
        rec = s.record_value
        for v in ints:
            rec(v)

    def quantile(self, s, q):
        return s.get_value_at_percentile(q * 100.0) * HDR_UNIT

    def merge(self, acc, other):
        acc.add(other)

    def serialize(self, s):
        return s.encode()

    config = "HdrHistogram(1 µs, 1e13 µs, 2 significant digits) (values recorded as integer µs)"


PEERS = [Ours, DD, KLL, FastDigest, Hdr]


def _dist_version(name: str):
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


# ---------------------------------------------------------------------------------------
# measurement helpers
# ---------------------------------------------------------------------------------------


def timed(fn, repeats: int):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def rate(n, best_median):
    best, med = best_median
    return {"best": n / best, "median": n / med}


def rel_errors(get_q, exact: dict[float, float]) -> dict[str, float]:
    out = {}
    for q in QS:
        e = exact[q]
        v = float(get_q(q))
        out[f"p{q * 100:g}"] = abs(v - e) / e if e else (0.0 if v == 0 else float("inf"))
    return out


def query_latency(adapter, s, calls: int) -> dict:
    q = adapter.quantile
    for _ in range(200):
        q(s, 0.99)
    per_call = []
    pc = time.perf_counter_ns
    for _ in range(calls):
        t0 = pc()
        q(s, 0.99)
        per_call.append(pc() - t0)
    # timer overhead, subtracted from the single-call figures
    ov = []
    for _ in range(calls):
        t0 = pc()
        ov.append(pc() - t0)
    overhead = statistics.median(ov)
    per_call = np.maximum(np.array(per_call, dtype=np.float64) - overhead, 0.0)
    # the same in groups of 10 consecutive calls (less sensitive to scheduler jitter on a
    # shared 2-core machine): p99 of the per-call mean of each group
    groups = []
    for _ in range(calls // 10):
        t0 = pc()
        for _ in range(10):
            q(s, 0.99)
        groups.append((pc() - t0 - overhead) / 10)
    loops = 2000
    t0 = time.perf_counter()
    for _ in range(loops):
        q(s, 0.99)
    mean = (time.perf_counter() - t0) / loops
    return {"p50_us": float(np.percentile(per_call, 50)) / 1e3,
            "p99_us": float(np.percentile(per_call, 99)) / 1e3,
            "p99_us_groups_of_10": float(np.percentile(groups, 99)) / 1e3,
            "mean_us": mean * 1e6}


def jit_costs() -> dict:
    """First kernel calls in a fresh process, with an empty and then a warm Numba cache."""
    code = (
        "import time; t0 = time.perf_counter(); import streams.sketch as s; t1 = time.perf_counter(); "
        "import numpy as np; q = s.QuantileSketch(); t2 = time.perf_counter(); "
        "q.add_many(np.array([1.0, 2.0])); t3 = time.perf_counter(); "
        "r = s.QuantileSketch(); r.add_many(np.array([3.0])); t4 = time.perf_counter(); "
        "q.merge(r); t5 = time.perf_counter(); "
        "print(t1 - t0, t2 - t1, t3 - t2, t5 - t4)"
    )
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache,
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        for label in ("fresh_cache", "warm_cache"):
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               env=env, cwd=str(ROOT))
            if r.returncode != 0:
                out[label] = {"error": r.stderr.strip()[-500:]}
                continue
            imp, mapping, add, merge = map(float, r.stdout.split())
            out[label] = {"import_s": imp, "first_sketch_tables_s": mapping,
                          "first_add_many_s": add, "first_merge_s": merge,
                          "first_calls_total_s": add + merge}
    return out


def machine() -> dict:
    model = None
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import numba

    return {"cpu_model": model or platform.processor(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "platform": platform.platform()}


# ---------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10**7, help="values (default 10^7)")
    ap.add_argument("--per-value-n", type=int, default=10**6,
                    help="values in the per-value add loop (default 10^6)")
    ap.add_argument("--quick", action="store_true", help="10^6 values, fewer repeats")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-jit", action="store_true", help="skip the JIT-cost subprocesses")
    ap.add_argument("--only", default="", help="comma-separated adapter names")
    args = ap.parse_args(argv)
    n = args.n
    repeats = args.repeats
    pv_n = args.per_value_n
    if args.quick:
        n = min(n, 10**6)
        repeats = min(repeats, 3)
        pv_n = min(pv_n, 2 * 10**5)
    pv_n = min(pv_n, n)
    minutes, per_minute = 60, 10_000

    x = lognormal_mixture(n)
    exact = dict(zip(QS, np.quantile(x, QS, method="lower").tolist()))
    hour = x[: minutes * per_minute] if n >= minutes * per_minute else lognormal_mixture(
        minutes * per_minute, seed=43)
    hour_exact = dict(zip(QS, np.quantile(hour, QS, method="lower").tolist()))
    pv_list = x[:pv_n].tolist()
    dists = other_distributions(min(n, 10**6))
    dists_exact = {k: dict(zip(QS, np.quantile(v, QS, method="lower").tolist()))
                   for k, v in dists.items()}

    report = {
        "benchmark": "quantile sketch",
        "machine": machine(),
        "data": {"kind": "lognormal mixture of response times (s)", "n": n,
                 "per_value_n": pv_n, "merge": f"{minutes} sketches x {per_minute} values",
                 "min": float(x.min()), "max": float(x.max()), "exact": exact},
        "repeats": repeats,
        "results": {},
    }
    only = {s for s in args.only.split(",") if s}

    for cls in PEERS:
        if only and cls.name not in only:
            continue
        name = cls.name
        res: dict = {}
        report["results"][name] = res
        try:
            ad = cls()
            res["config"] = ad.config
            res["version"] = getattr(ad, "version", None)
            prep = getattr(ad, "prepare", None)
            # ---- batch insert
            if ad.batch is not None:
                def run_batch():
                    s = ad.make()
                    ad.batch(s, x)
                    return s

                run_batch()  # warm (allocations, lazy imports)
                res["batch_values_per_s"] = rate(n, timed(run_batch, repeats))
                full = run_batch()
            else:
                res["batch_values_per_s"] = None
                res["batch_note"] = "no batch API"
                full = None
            # ---- per-value add
            vals = prep(pv_list) if prep else pv_list

            def run_pv():
                s = ad.make()
                ad.per_value(s, vals)

            res["add_values_per_s"] = rate(pv_n, timed(run_pv, max(1, min(repeats, 3))))
            if full is None:
                # build the full-data sketch value by value (no batch API)
                full = ad.make()
                allv = prep(x.tolist()) if prep else x.tolist()
                t0 = time.perf_counter()
                ad.per_value(full, allv)
                res["full_build_per_value_s"] = time.perf_counter() - t0
                del allv
            # ---- accuracy on the whole data
            res["rel_error"] = rel_errors(lambda q: ad.quantile(full, q), exact)
            res["worst_rel_error"] = max(res["rel_error"].values())
            # ---- query latency
            res["query_p99"] = query_latency(ad, full, 5000)
            # ---- 60-way merge
            mins = []
            for i in range(minutes):
                s = ad.make()
                chunk = hour[i * per_minute:(i + 1) * per_minute]
                if ad.batch is not None:
                    ad.batch(s, chunk)
                else:
                    ad.per_value(s, prep(chunk.tolist()) if prep else chunk.tolist())
                mins.append(s)
            merged_box = []

            def run_merge():
                acc = ad.make()
                for s in mins:
                    ad.merge(acc, s)
                merged_box.append(acc)

            run_merge()
            res["merge60_ms"] = {k: v * 1e3 for k, v in
                                 zip(("best", "median"), timed(run_merge, max(repeats, 5)))}
            merged = merged_box[-1]
            res["merged_rel_error"] = rel_errors(lambda q: ad.quantile(merged, q), hour_exact)
            res["merged_worst_rel_error"] = max(res["merged_rel_error"].values())
            blob = ad.serialize(merged)
            res["serialized_bytes_hour"] = len(blob)
            if getattr(ad, "serialize_note", None):
                res["serialized_note"] = ad.serialize_note
            if name == "callstream":
                from streams.sketch import QuantileSketch

                assert QuantileSketch.from_bytes(blob) == merged
                one = ad.make()
                ad.batch(one, hour)
                res["merged_equals_single_sketch"] = bool(one == merged)
                res["serialized_bytes_full"] = len(ad.serialize(full))
                res["to_bytes_us"] = timed(lambda: merged.to_bytes(), 20)[0] * 1e6
                res["from_bytes_us"] = timed(lambda: QuantileSketch.from_bytes(blob), 20)[0] * 1e6
            # ---- other distributions (batch-capable sketches)
            if ad.batch is not None:
                dres = {}
                for dname, dv in dists.items():
                    s = ad.make()
                    ad.batch(s, dv)
                    errs = rel_errors(lambda q: ad.quantile(s, q), dists_exact[dname])
                    dres[dname] = max(errs.values())
                res["worst_rel_error_by_distribution"] = dres
            del full, mins, merged_box, merged
        except Exception as e:  # a broken peer must not sink the whole report
            res["error"] = f"{type(e).__name__}: {e}"

    r = report["results"]
    ours = r.get("callstream", {})

    def get(path, d):
        for p in path:
            if not isinstance(d, dict) or d.get(p) is None:
                return None
            d = d[p]
        return d

    ob = get(("batch_values_per_s", "best"), ours)
    kb = get(("datasketches_kll", "batch_values_per_s", "best"), r)
    dd = get(("ddsketch", "add_values_per_s", "best"), r)
    ratios = {
        "ours_batch_over_kll_batch": ob / kb if ob and kb else None,
        "ours_batch_over_ddsketch_per_value": ob / dd if ob and dd else None,
        "ours_add_over_ddsketch_add": (get(("add_values_per_s", "best"), ours) / dd
                                       if dd and get(("add_values_per_s", "best"), ours) else None),
    }
    report["ratios"] = ratios
    worst_all = None
    if ours and "error" not in ours:
        worst_all = max([ours["worst_rel_error"], ours["merged_worst_rel_error"],
                         *ours.get("worst_rel_error_by_distribution", {}).values()])
    report["targets"] = {
        "batch >= 5x KLL": _ok(ratios["ours_batch_over_kll_batch"], 5, ">="),
        "batch >= 50x ddsketch per-value": _ok(ratios["ours_batch_over_ddsketch_per_value"], 50, ">="),
        "batch >= 150 M values/s": _ok(ob and ob / 1e6, 150, ">="),
        "worst rel error <= 1% (all distributions, merged)": _ok(worst_all, 0.01, "<="),
        "constant input exact": (get(("worst_rel_error_by_distribution", "constant"), ours) == 0.0
                                 if ours else None),
        "merge of 60 <= 0.1 ms": _ok(get(("merge60_ms", "best"), ours), 0.1, "<="),
        "hour serialized <= 2 KB": _ok(get(("serialized_bytes_hour",), ours), 2048, "<="),
        "warm p99 query <= 2 us": _ok(get(("query_p99", "p99_us"), ours), 2.0, "<="),
    }
    if not args.no_jit:
        report["jit"] = jit_costs()
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(report, indent=1, default=float))
    return 0


def _ok(value, target, op):
    if value is None:
        return None
    return {"value": value, "target": target,
            "pass": bool(value >= target if op == ">=" else value <= target)}


if __name__ == "__main__":
    sys.exit(main())
