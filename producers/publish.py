"""`callstream replay LOG ...` (to Kafka): publish event logs, original bytes, keyed by call.

Each line goes to the topic of its `type` with key = `call_id` and Kafka timestamp = event
time; values are the original bytes, never re-encoded. Lines that cannot be routed
(malformed JSON, unknown type) still go out, on `calls.received`, so that the processor
dead-letters them with the reason: the replayer never filters.

Records are sent in chunks through `producers.kafka_io.BulkProducer` (acks=all, idempotent,
order kept per partition). With `speed`, records are paced by event time: the N-th record
goes out when `(its time - the first record's time) / speed` has passed; event times only
move the clock forward (a late record goes at once), and a time more than a day ahead of the
clock is treated as an outlier rather than a reason to wait a day. Ctrl-C stops reading,
flushes what was read, and reports the line to resume from (`--from-line`)."""

from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import orjson

from streams.errors import CallstreamError
from streams.progress import ProgressBar
from streams.replay import check_logs, iter_lines
from streams.timefmt import parse_ts
from streams.topics import TopicNames
from producers.kafka_io import BulkProducer, ensure_topics

#: A chunk is sent when it holds this many records or bytes.
CHUNK_RECORDS = 50_000
CHUNK_BYTES = 8 * 1024 * 1024
#: Event times further than this ahead of the pacing clock do not hold the replay back.
OUTLIER_MS = 86_400_000

_TOPIC_INDEX = {"call_received": 0, "triaged": 1, "crew_arrived": 2}


@dataclass
class PublishResult:
    sent: int                     # records handed to Kafka
    failed: int                   # of those, records Kafka did not accept
    last_source: str | None       # file (or source) of the last record handed over
    last_line: int                # its record number across all logs (resume after it)
    interrupted: bool
    elapsed_s: float
    first_failed_line: int | None = None
    source_line: int = 0          # line number of the last record within its file
    first_error: str | None = None

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0


def route(raw: bytes) -> tuple[int, bytes | None, int | None]:
    """(topic index: 0 received / 1 triaged / 2 arrived, key, event time ms) of a raw line;
    lines that cannot be routed go to calls.received with no key."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return 0, None, None
    if type(obj) is not dict:
        return 0, None, None
    cid = obj.get("call_id")
    key = cid.encode() if type(cid) is str else None
    etype = obj.get("type")
    return _TOPIC_INDEX.get(etype, 0) if type(etype) is str else 0, key, parse_ts(obj.get("ts"))


class Pacer:
    """Wall-clock due times for event times at `speed` x real time (see module doc)."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self.origin_wall: float | None = None
        self.origin_ts = 0
        self.clock = 0

    def due(self, ts: int | None) -> float | None:
        if ts is None:
            return None
        if self.origin_wall is None:
            self.origin_wall, self.origin_ts, self.clock = time.perf_counter(), ts, ts
            return None
        if ts > self.clock:
            if ts - self.clock > OUTLIER_MS:
                return None
            self.clock = ts
        return self.origin_wall + (self.clock - self.origin_ts) / 1000.0 / self.speed


class StopOnInterrupt:
    """First Ctrl-C asks the loop to stop (it then flushes); a second one aborts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> "StopOnInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        sys.stderr.write("\nstopping: flushing what was read to Kafka (Ctrl-C again to abort)\n")

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def publish_records(records: Iterable[tuple[str, int, int, bytes]], bootstrap: str,
                    topics: TopicNames, partitions: int = 6, speed: float | None = None,
                    progress: ProgressBar | None = None, create_topics: bool = True,
                    first_number: int = 1, **producer_options) -> PublishResult:
    """Publish (source, source line, record number, raw bytes) records in order.

    Returns when every record handed over is acknowledged or failed. `progress` is fed the
    number of bytes consumed (its `total` should be the bytes expected)."""
    if speed is not None and not speed > 0:
        raise CallstreamError(f"--speed must be a positive factor, got {speed}")
    if create_topics:
        ensure_topics(bootstrap, topics, partitions)
    bulk = BulkProducer(bootstrap, **producer_options)
    names = list(topics.inputs)
    pacer = Pacer(speed) if speed else None
    bar = progress or ProgressBar(1, False)
    vals: list[bytes] = []
    keys: list = []
    tss: list[int] = []
    tix: list[int] = []
    pos: list[int] = []
    chunk_bytes = 0
    sent = 0
    done_bytes = 0
    last = (None, 0, first_number - 1)   # source, its line, record number of the last record
    last_ts: int | None = None
    interrupted = False
    read = 0
    started = bar.started = time.perf_counter()

    def flush_chunk() -> None:
        nonlocal chunk_bytes, sent
        if vals:
            bulk.send_many(names, np.array(tix, np.int64), keys, vals, np.array(tss, np.int64),
                           np.array(pos, np.int64))
            sent += len(vals)
            for buf in (vals, keys, tss, tix, pos):
                buf.clear()
            chunk_bytes = 0

    try:
        with StopOnInterrupt() as stop:
            for source, source_line, number, raw in records:
                if stop.requested:
                    interrupted = True
                    break
                topic_i, key, ts = route(raw)
                if pacer is not None:
                    due = pacer.due(ts)
                    if due is not None and due - time.perf_counter() > 0.002:
                        flush_chunk()
                        last_sent = last
                        while not stop.requested:
                            wait = due - time.perf_counter()
                            if wait <= 0:
                                break
                            bar.update(read, done_bytes)
                            time.sleep(min(wait, 0.1))
                        if stop.requested:
                            interrupted = True
                            last = last_sent
                            break
                if ts is None:
                    ts = last_ts if last_ts is not None else int(time.time() * 1000)
                else:
                    last_ts = ts
                vals.append(raw)
                keys.append(key)
                tss.append(ts)
                tix.append(topic_i)
                pos.append(number)
                last = (source, source_line, number)
                chunk_bytes += len(raw)
                done_bytes += len(raw) + 1
                read += 1
                if len(vals) >= CHUNK_RECORDS or chunk_bytes >= CHUNK_BYTES:
                    flush_chunk()
                if not read & 2047:
                    bar.update(read, done_bytes)
            flush_chunk()
            bulk.flush()
    except KeyboardInterrupt:          # a second Ctrl-C: leave now, without flushing
        bulk.close(timeout=0)
        raise
    except BaseException:
        bulk.close(timeout=5)
        raise
    bulk.close()
    elapsed = time.perf_counter() - started
    bar.close(sent, done_bytes)
    error = None if bulk.first_error is None else \
        f"{bulk.first_error.__class__.__name__}: {bulk.first_error}"[:200]
    return PublishResult(sent, bulk.failed, last[0], last[2], interrupted, elapsed,
                         bulk.first_failed_position, last[1], error)


def log_records(paths: list[Path], from_line: int = 1) -> Iterator[tuple[str, int, int, bytes]]:
    """(file name, line in file, record number across all logs, raw) from `from_line` on."""
    number = 0
    for path in paths:
        name = path.name
        for lineno, raw in iter_lines(path):
            number += 1
            if number >= from_line:
                yield name, lineno, number, raw


def expected_bytes(paths: list[Path]) -> int:
    """Uncompressed size of the logs (a gzip file's size from its trailer; for progress)."""
    total = 0
    for p in paths:
        size = p.stat().st_size
        with open(p, "rb") as f:
            if f.read(2) == b"\x1f\x8b" and size >= 18:
                f.seek(-4, 2)
                size = max(size, int.from_bytes(f.read(4), "little"))
        total += size
    return total


def publish_logs(paths: list[str], bootstrap: str, topic_prefix: str = "", partitions: int = 6,
                 speed: float | None = None, from_line: int = 1,
                 progress: bool = False) -> PublishResult:
    """Publish event logs in order (see module doc); raises CallstreamError when Kafka did
    not accept every record, naming the line to resume from."""
    if from_line < 1:
        raise CallstreamError(f"--from-line must be 1 or more, got {from_line}")
    logs = check_logs(paths)
    bar = ProgressBar(expected_bytes(logs), progress)
    result = publish_records(log_records(logs, from_line), bootstrap,
                             TopicNames.with_prefix(topic_prefix), partitions, speed, bar,
                             first_number=from_line)
    if result.failed:
        raise CallstreamError(
            f"{result.failed:,} of {result.sent:,} events were not accepted by Kafka (first "
            f"error: {result.first_error}); resume with --from-line {result.first_failed_line}")
    return result


def publish_lines(lines: Iterable[bytes], total: int, bootstrap: str, topic_prefix: str = "",
                  partitions: int = 6, speed: float | None = None, progress: bool = False,
                  source: str = "simulate", from_line: int = 1) -> PublishResult:
    """Publish generated lines (e.g. from the simulator) from the `from_line`-th on; `total`
    sizes the progress bar."""
    if from_line < 1:
        raise CallstreamError(f"--from-line must be 1 or more, got {from_line}")

    def records():
        for i, raw in enumerate(lines, 1):
            if i >= from_line:
                yield source, i, i, raw
    bar = _CountingBar(max(total - from_line + 1, 1), progress, "simulate")
    result = publish_records(records(), bootstrap, TopicNames.with_prefix(topic_prefix),
                             partitions, speed, bar, first_number=from_line)
    if result.failed:
        raise CallstreamError(f"{result.failed:,} of {result.sent:,} events were not accepted "
                              f"by Kafka (first error: {result.first_error})")
    return result


class _CountingBar(ProgressBar):
    """Progress by records rather than bytes (the simulator knows its record count)."""

    def update(self, events: int, done: float, force: bool = False) -> None:
        super().update(events, events, force)

    def close(self, events: int, done: float) -> None:
        super().close(events, events)


def report(result: PublishResult, bootstrap: str, what: str = "events") -> int:
    """The closing line on stderr; exit status 130 when interrupted."""
    if result.interrupted:
        where = f" ({result.last_source} line {result.source_line:,})" \
            if result.last_source and result.source_line != result.last_line else ""
        print(f"interrupted: {result.sent:,} {what} flushed to Kafka, up to record "
              f"{result.last_line:,}{where}; resume with --from-line {result.last_line + 1}",
              file=sys.stderr)
        return 130
    print(f"published {result.sent:,} {what} to {bootstrap} in {result.elapsed_s:.1f} s "
          f"({result.rate:,.0f} {what}/s)", file=sys.stderr)
    return 0


def cli(args) -> int:
    if args.speed is not None and args.max:
        raise CallstreamError("--speed and --max exclude each other (--max is as fast as "
                              "possible)")
    progress = {"auto": sys.stderr.isatty(), "always": True, "never": False}[args.progress]
    result = publish_logs(args.logs, args.bootstrap, args.topic_prefix, args.partitions,
                          None if args.max else args.speed, args.from_line, progress=progress)
    return report(result, args.bootstrap)
