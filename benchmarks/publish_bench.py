"""Replay-to-Kafka throughput against a local real broker, with baselines in the same run.

    python benchmarks/publish_bench.py [--events 1000000] [--bootstrap HOST:PORT] [--workdir DIR]

Starts a private single-node broker (unless --bootstrap is given), writes an England-wide
synthetic log, then publishes it to fresh topics (6 partitions each) with:

* `callstream`: `producers.publish.publish_logs`, i.e. `callstream replay LOG --max` (bulk
  Numba encoding into kafka-python's idempotent producer, acks=all);
* `send, tuned`: one `KafkaProducer.send()` per event with the same producer settings
  (acks=all, idempotence, 512 KiB batches, linger 10 ms) - the per-record path;
* `send, defaults`: one `send()` per event with kafka-python's default settings plus
  acks=all and idempotence (16 KiB batches, no linger);
* `send().get()`: a synchronous send per event (on the first 5,000 events only).

Every run parses each line for its key, topic and timestamp, as a replay must. After each
run the bench checks the topics' end offsets add up to the events sent. Prints one JSON
object with events/s per method and the ratios to callstream."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from producers.publish import publish_logs, route  # noqa: E402
from producers.simulate import england, simulate, write_jsonl  # noqa: E402
from streams.replay import iter_lines  # noqa: E402
from streams.timefmt import parse_ts  # noqa: E402
from streams.topics import TopicNames  # noqa: E402

EVENTS_PER_DAY = 86_000


def end_offsets(bootstrap: str, topics: TopicNames) -> int:
    from kafka import KafkaConsumer, TopicPartition
    c = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        tps = [TopicPartition(t, p) for t in topics.inputs for p in c.partitions_for_topic(t)]
        return sum(c.end_offsets(tps).values())
    finally:
        c.close()


def per_record(log: Path, bootstrap: str, topics: TopicNames, options: dict, limit=None,
               sync=False) -> tuple[int, float]:
    """Publish with one kafka-python send() per line; returns (events, seconds)."""
    from kafka import KafkaProducer
    from producers.kafka_io import ensure_topics
    ensure_topics(bootstrap, topics, 6)
    producer = KafkaProducer(bootstrap_servers=bootstrap, **options)
    names = topics.inputs
    for t in names:
        producer.partitions_for(t)
    n = 0
    t0 = time.perf_counter()
    for _, raw in iter_lines(log):
        topic, key, ts = route(raw)
        future = producer.send(names[topic], value=raw, key=key, timestamp_ms=ts)
        if sync:
            future.get(timeout=30)
        n += 1
        if limit and n >= limit:
            break
    producer.flush()
    elapsed = time.perf_counter() - t0
    producer.close()
    return n, elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--bootstrap", default=None, help="use this broker instead of a private one")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--sync-events", type=int, default=5_000)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="publish-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        from streams.broker import LocalBroker, free_port
        port, ctrl = free_port(), free_port()
        broker = LocalBroker(work / "broker", port=port, controller_port=ctrl)
        broker.start(timeout=120, die_with_parent=True)
        bootstrap = broker.bootstrap
    try:
        log = work / f"england-{args.events}.jsonl"
        if not log.exists():
            days = args.events / EVENTS_PER_DAY
            write_jsonl(simulate(england(), parse_ts("2026-01-01T00:00:00Z"), days, seed=5)
                        .lines(), str(log))
        n_lines = sum(1 for _ in open(log, "rb"))
        result = {"benchmark": "replay to Kafka", "machine": f"{os.cpu_count()} cores",
                  "broker": "local Apache Kafka 3.9 (KRaft), loopback", "events": n_lines,
                  "log_bytes": log.stat().st_size, "runs": {}}
        runs = result["runs"]

        topics = TopicNames.with_prefix("bench-ours.")
        r = publish_logs([str(log)], bootstrap, "bench-ours.", partitions=6)
        runs["callstream"] = {"events": r.sent, "seconds": round(r.elapsed_s, 2),
                              "events_per_s": round(r.sent / r.elapsed_s),
                              "on_broker": end_offsets(bootstrap, topics)}
        tuned = dict(acks="all", enable_idempotence=True, linger_ms=10, batch_size=512 * 1024,
                     max_request_size=4 * 1024 * 1024, max_in_flight_requests_per_connection=5)
        defaults = dict(acks="all", enable_idempotence=True)
        for name, options, limit, sync in (("send, tuned", tuned, None, False),
                                           ("send, defaults", defaults, None, False),
                                           ("send().get()", defaults, args.sync_events, True)):
            prefix = "bench-" + name.replace(", ", "-").replace("().", "-").replace("()", "") + "."
            topics = TopicNames.with_prefix(prefix)
            n, el = per_record(log, bootstrap, topics, options, limit, sync)
            runs[name] = {"events": n, "seconds": round(el, 2), "events_per_s": round(n / el),
                          "on_broker": end_offsets(bootstrap, topics)}
        ours = runs["callstream"]["events_per_s"]
        result["ratios"] = {f"callstream / {k}": round(ours / v["events_per_s"], 1)
                            for k, v in runs.items() if k != "callstream"}
        result["target_events_per_s"] = 50_000
        result["target_met"] = ours >= 50_000
        result["all_delivered"] = all(v["on_broker"] == v["events"] for v in runs.values())
        print(json.dumps(result, indent=2))
    finally:
        if broker is not None:
            broker.stop(timeout=30)


if __name__ == "__main__":
    main()
