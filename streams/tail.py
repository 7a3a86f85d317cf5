"""`callstream tail stats|alerts|deadletter`: a readable view of an output topic."""

from __future__ import annotations

import time

import orjson

from streams.errors import CallstreamError
from streams.topics import TopicNames


def describe(which: str, rec: dict) -> str:
    if which == "stats":
        head = f"{rec['end']}  {rec['window']:>4}  {rec['trust']:<7} {rec['category']:<4}"
        if rec["category"] == "ALL":
            return (f"{head} calls {rec['calls']:>6}  hear&treat {rec['hear_and_treat']:>5}  "
                    f"redirected {rec['redirected']:>5}")
        if not rec["count"]:
            return f"{head} no responses      waiting {rec.get('waiting', 0)}"
        return (f"{head} n {rec['count']:>6}  mean {rec['mean_s'] / 60:6.1f} min  "
                f"p90 {rec['p90_s'] / 60:6.1f} min  waiting {rec.get('waiting', 0)}")
    if which == "alerts":
        return f"{rec.get('starts_at')}  {rec.get('status', '?'):>8}  {rec.get('summary', rec)}"
    return f"{rec.get('source')}/{rec.get('partition')}@{rec.get('offset')}  {rec.get('reason')}: {rec.get('detail')}"


def cli(args) -> int:
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError
    topic = getattr(TopicNames.with_prefix(args.topic_prefix), args.which)
    try:
        consumer = KafkaConsumer(topic, bootstrap_servers=args.bootstrap,
                                 auto_offset_reset="earliest" if args.from_beginning else "latest",
                                 consumer_timeout_ms=500, max_partition_fetch_bytes=16 << 20)
    except KafkaError as exc:
        raise CallstreamError(f"cannot reach Kafka at {args.bootstrap} ({exc.__class__.__name__}); "
                              "start one with `callstream broker start`") from None
    last = time.monotonic()
    try:
        while args.idle <= 0 or time.monotonic() - last < args.idle:
            for msg in consumer:
                rec = orjson.loads(msg.value)
                if args.which == "stats" and args.window and rec.get("window") != args.window:
                    continue
                print(describe(args.which, rec), flush=True)
                last = time.monotonic()
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0
