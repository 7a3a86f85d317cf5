"""What the control-room feed costs next to the processing it watches. Prints one JSON object.

Baseline: the processing core replaying a generated log (`process_lines`, the worker's core).
Measured in the same run, on the records that replay produced: feeding them all to a
`LiveView` with 0, 10 and 100 SSE subscribers (never drained, so every queue fills and drops:
the slow-browser worst case), and queueing the alerts for Alertmanager (`submit`, no
network). Ratios are feed time / processing time: the share of the stream's work the feed
adds, were it on the same thread.

    .venv/bin/python benchmarks/feed_bench.py            # 3 trusts x 2 days
    .venv/bin/python benchmarks/feed_bench.py --quick    # 3 trusts x 12 hours
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from producers.simulate import TrustProfile, generate  # noqa: E402
from streams.alertmanager import AlertmanagerSender  # noqa: E402
from streams.feed import LiveView  # noqa: E402
from streams.replay import load_settings_and_rules, process_lines  # noqa: E402
from streams.timefmt import parse_ts  # noqa: E402


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    days = 0.5 if args.quick else 2.0
    trusts = [TrustProfile("LAS", 6000.0), TrustProfile("EEAST", 4000.0), TrustProfile("NWAS", 5000.0)]
    lines = list(generate(trusts, parse_ts("2026-01-14T00:00:00Z"), days, seed=1))
    settings, rules = load_settings_and_rules(None, None)
    process_lines(lines[:2000], settings, rules)           # warm the Numba kernels

    result = {}

    def replay():
        result["out"] = process_lines(lines, settings, rules)[1]
    processing_s = best(replay, args.repeats)
    out = result["out"]
    stats, alerts = out.stats_records, out.alert_records

    feed_s = {}
    for subscribers in (0, 10, 100):
        def feed():
            live = LiveView()
            for _ in range(subscribers):
                live.subscribe()
            for rec in stats:
                live.on_stats(rec)
            for rec in alerts:
                live.on_alert(rec)
        feed_s[subscribers] = best(feed, args.repeats)

    def submit():
        sender = AlertmanagerSender("http://127.0.0.1:9", queue_size=len(alerts) + 1)
        for rec in alerts:
            sender.submit(rec)
    submit_s = best(submit, args.repeats) if alerts else 0.0

    n_feed = len(stats) + len(alerts)
    print(orjson.dumps({
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "log": {"trusts": len(trusts), "days": days, "events": len(lines),
                "stats_records": len(stats), "alert_records": len(alerts)},
        "processing_s": round(processing_s, 4),
        "processing_events_per_s": round(len(lines) / processing_s),
        "feed_s": {str(k): round(v, 4) for k, v in feed_s.items()},
        "feed_us_per_record": {str(k): round(1e6 * v / n_feed, 2) for k, v in feed_s.items()},
        "ratio_feed_to_processing": {str(k): round(v / processing_s, 4) for k, v in feed_s.items()},
        "alertmanager_submit_us_per_alert": round(1e6 * submit_s / len(alerts), 2) if alerts else None,
    }, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
