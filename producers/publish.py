"""`callstream replay LOG ...` (to Kafka): publish event logs, original bytes, keyed by call.

Each line goes to the topic of its `type` with key = `call_id` and Kafka timestamp = event
time; values are the original bytes, never re-encoded. Lines that cannot be routed
(malformed JSON, unknown type) still go out, on `calls.received`, so that the processor
dead-letters them with the reason: the replayer never filters."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import orjson

from streams.errors import CallstreamError
from streams.replay import check_logs, iter_lines
from streams.timefmt import parse_ts
from streams.topics import TopicNames
from producers.kafka_io import ensure_topics, make_producer


@dataclass
class PublishResult:
    sent: int
    failed: int
    last_source: str | None
    last_line: int
    interrupted: bool
    elapsed_s: float


def route(raw: bytes, topics: TopicNames) -> tuple[str, bytes | None, int | None]:
    """(topic, key, timestamp ms) for a raw line; unroutable lines go to calls.received."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return topics.received, None, None
    if type(obj) is not dict:
        return topics.received, None, None
    cid = obj.get("call_id")
    key = cid.encode() if type(cid) is str else None
    ts = parse_ts(obj.get("ts"))
    etype = obj.get("type")
    topic = topics.for_type(etype) if etype in ("call_received", "triaged", "crew_arrived") \
        else topics.received
    return topic, key, ts


def publish_logs(paths: list[str], bootstrap: str, topic_prefix: str = "", partitions: int = 6,
                 speed: float | None = None, from_line: int = 1,
                 progress: bool = False) -> PublishResult:
    logs = check_logs(paths)
    topics = TopicNames.with_prefix(topic_prefix)
    ensure_topics(bootstrap, topics, partitions)
    producer = make_producer(bootstrap)
    errors: list[Exception] = []
    sent = 0
    last_source, last_line = None, 0
    started = time.perf_counter()
    first_ts = None
    last_report = started
    interrupted = False
    index = 0
    try:
        for path in logs:
            for lineno, raw in iter_lines(path):
                index += 1
                if index < from_line:
                    continue
                topic, key, ts = route(raw, topics)
                if speed and ts is not None:
                    if first_ts is None:
                        first_ts = ts
                    due = started + (ts - first_ts) / 1000.0 / speed
                    delay = due - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                producer.send(topic, value=raw, key=key, timestamp_ms=ts).add_errback(errors.append)
                sent += 1
                last_source, last_line = path.name, index
                if progress and sent % 10_000 == 0 and time.perf_counter() - last_report > 0.5:
                    last_report = time.perf_counter()
                    rate = sent / (last_report - started)
                    sys.stderr.write(f"\rreplay: {sent:,} events sent  {rate:,.0f} ev/s ")
                    sys.stderr.flush()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        producer.flush()
        producer.close()
    elapsed = time.perf_counter() - started
    if progress:
        sys.stderr.write("\n")
    if errors:
        raise CallstreamError(f"{len(errors)} of {sent} events were not accepted by Kafka "
                              f"(first error: {errors[0]!r}); resume with --from-line")
    return PublishResult(sent, len(errors), last_source, last_line, interrupted, elapsed)


def cli(args) -> int:
    result = publish_logs(args.logs, args.bootstrap, args.topic_prefix, args.partitions,
                          args.speed, args.from_line, progress=sys.stderr.isatty())
    rate = result.sent / result.elapsed_s if result.elapsed_s else 0.0
    if result.interrupted:
        print(f"interrupted: {result.sent:,} events flushed to Kafka, up to line "
              f"{result.last_line} ({result.last_source}); resume with --from-line "
              f"{result.last_line + 1}", file=sys.stderr)
        return 130
    print(f"published {result.sent:,} events to {args.bootstrap} in {result.elapsed_s:.1f} s "
          f"({rate:,.0f} events/s)", file=sys.stderr)
    return 0
