"""Feeds a `LiveView` from the output topics and measures the stream's health.

Reading `calls.stats`, `calls.alerts` and `calls.deadletter` (every partition, no consumer
group) rather than the local processor's outputs means any worker's dashboard shows the
whole system, whichever worker produced a record, and a restarted worker rebuilds its view:
alerts are read from the beginning (an alert may have been firing for days), stats from the
trend span ago, dead letters from when this feed was made (counts since this worker started;
only the reason is read, never the rejected bytes). Positions are found by record time, so
records written while the feed starts up are never skipped.

Health is measured against Kafka as well: consumer lag and events/s from the worker group's
committed offsets against the input topics' end offsets (all workers together), broker
connectivity from whether those requests succeed. The watermark comes from the live
processor through a callable: the merge's closed-through time on the worker running the
merge, the global watermark it publishes on every other worker."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Callable

from streams import rawfetch
from streams.feed import HealthFacts, LiveView, parse_json
from streams.topics import TopicNames

log = logging.getLogger("callstream.feed")

FETCH_BYTES = 16 * 1024 * 1024
PARSE_SLICE = 5000      # records parsed between two yields to the event loop


class MissingTopics(RuntimeError):
    """Output or input topics the feed needs do not exist (the worker creates them first)."""


class RateMeter:
    """Events per second from a monotonically growing total, over a sliding wall-clock span."""

    def __init__(self, span_s: float = 10.0) -> None:
        self.span_s = span_s
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, total: int) -> float | None:
        self.samples.append((now, total))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.span_s:
            self.samples.popleft()
        t0, n0 = self.samples[0]
        if now - t0 <= 0:
            return None
        return round(max(total - n0, 0) / (now - t0), 2)


def lag_and_position(end: dict, committed: dict) -> tuple[int, int]:
    """(messages not yet processed, messages processed) over input partitions; a partition the
    group has not committed yet counts from offset 0."""
    lag = done = 0
    for tp, hi in end.items():
        pos = committed.get(tp)
        pos = 0 if pos is None or pos < 0 else min(pos, hi)
        lag += hi - pos
        done += pos
    return lag, done


class TopicFeed:
    """Runs in the worker's event loop (`await feed.run()` until cancelled)."""

    def __init__(self, live: LiveView, bootstrap: str, topics: TopicNames, group_id: str,
                 watermark: Callable[[], int | None] | None = None,
                 probe_every_s: float = 2.0, request_timeout_s: float = 5.0) -> None:
        self.live = live
        self.bootstrap = bootstrap
        self.topics = topics
        self.group_id = group_id
        self.watermark = watermark or (lambda: None)
        self.probe_every_s = probe_every_s
        self.request_timeout_s = request_timeout_s
        self.rate = RateMeter()
        self.records = 0
        #: stats records not parsed: a later record of the same key in the same fetch
        #: replaces them and nobody was subscribed to see them go by (the trend window's
        #: are handed over as bytes, for the trends)
        self.superseded = 0
        self._trend_suffix = b"/" + live.trend_window.encode()
        self.started_ms = int(time.time() * 1000)   # dead letters are counted from here on
        self._inputs: list = []

    async def run(self) -> None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        # fetches as columns (`RecordRun`): a worker catching up reads every stats record
        # the merge writes, and a ConsumerRecord apiece cost more than the view's own work
        rawfetch.install()
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                    enable_auto_commit=False, client_id="callstream-feed",
                                    max_partition_fetch_bytes=FETCH_BYTES,
                                    fetch_max_bytes=4 * FETCH_BYTES,
                                    value_deserializer=rawfetch.RAW_RUNS)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap,
                                    client_id="callstream-feed-admin",
                                    request_timeout_ms=int(self.request_timeout_s * 1000))
        started: list = []
        try:
            await self._until_connected(consumer.start)
            started.append(consumer.stop)
            await self._until_connected(admin.start)
            started.append(admin.close)
            # a broker slow to answer (a request timing out) is no reason to stop the
            # worker: retried as for a broker it cannot reach
            await self._until_connected(lambda: self._assign(consumer, admin))
            handlers = {self.topics.stats: self._stats, self.topics.alerts: self._alert,
                        self.topics.deadletter: self._dead_letter}
            next_probe = 0.0
            while True:
                batches = await consumer.getmany(timeout_ms=250, max_records=64)
                for tp, runs in batches.items():
                    handle = handlers[tp.topic]
                    for run in runs:
                        values = run.values()
                        self.records += len(values)
                        if tp.topic == self.topics.stats and not self.live.subscribers:
                            kept, trend = superseding(run.keys(), self._trend_suffix)
                            for key, indexes in trend.items():
                                self.live.on_trend_records(key, [values[i] for i in indexes])
                            self.superseded += len(values) - len(kept)
                            values = [values[i] for i in kept]
                        for i in range(0, len(values), PARSE_SLICE):
                            if i:
                                await asyncio.sleep(0)     # a long backlog: let others run
                            for value in values[i:i + PARSE_SLICE]:
                                handle(value)
                if time.monotonic() >= next_probe:
                    await self._probe(consumer, admin)
                    next_probe = time.monotonic() + self.probe_every_s
        finally:
            for close in reversed(started):
                try:
                    await close()
                except Exception:  # noqa: BLE001 - shutting down; nothing left to save
                    pass

    async def _until_connected(self, start) -> None:
        delay = 1.0
        while True:
            try:
                await start()
                return
            except MissingTopics:
                raise                 # not the broker's state: retrying would not help
            except Exception as exc:  # noqa: BLE001 - any client failure means "not yet"
                self.live.update_health(HealthFacts(broker_connected=False,
                                                    watermark_ms=self.watermark()))
                log.warning("live feed: cannot reach Kafka at %s (%s); retrying",
                            self.bootstrap, exc.__class__.__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _assign(self, consumer, admin) -> None:
        from aiokafka import TopicPartition

        wanted = (self.topics.stats, self.topics.alerts, self.topics.deadletter)
        described = await admin.describe_topics(list(wanted + self.topics.inputs))
        tps = {d["topic"]: [TopicPartition(d["topic"], p["partition"])
                            for p in sorted(d["partitions"], key=lambda p: p["partition"])]
               for d in described}
        missing = [t for t in wanted + self.topics.inputs if not tps.get(t)]
        if missing:       # the worker's preflight creates them; this would be a bug
            raise MissingTopics(f"live feed: topics without partitions: {', '.join(missing)}")
        consumer.assign([tp for t in wanted for tp in tps[t]])
        await consumer.seek_to_beginning(*tps[self.topics.alerts])
        # stats and dead letters by record time: the first record at or after `since`, else
        # the end offset read *before* asking, so a record written meanwhile is not skipped
        since = {tp: int((time.time() - self.live.trend_span_s - 2 * 3600) * 1000)
                 for tp in tps[self.topics.stats]}
        since.update({tp: self.started_ms for tp in tps[self.topics.deadletter]})
        end = await consumer.end_offsets(list(since))
        found = await consumer.offsets_for_times(since)
        for tp in since:
            consumer.seek(tp, found[tp].offset if found.get(tp) is not None else end[tp])
        self._inputs = [tp for t in self.topics.inputs for tp in tps[t]]

    def _stats(self, value: bytes | None) -> None:
        rec = parse_json(value)
        if rec is not None:
            self.live.on_stats(rec)

    def _alert(self, value: bytes | None) -> None:
        rec = parse_json(value)
        if rec is not None:
            self.live.on_alert(rec)

    def _dead_letter(self, value: bytes | None) -> None:
        rec = parse_json(value)
        self.live.on_dead_letter(rec.get("reason") if isinstance(rec, dict) else "unknown")

    async def _probe(self, consumer, admin) -> None:
        connected, lag, rate = True, None, None
        try:
            end, committed = await asyncio.wait_for(self._offsets(consumer, admin),
                                                    self.request_timeout_s)
            lag, done = lag_and_position(end, committed)
            rate = self.rate.add(time.monotonic(), done)
        except Exception as exc:  # noqa: BLE001 - a failed probe is the fact we report
            connected = False
            log.debug("live feed: health probe failed: %r", exc)
        self.live.update_health(HealthFacts(broker_connected=connected, consumer_lag=lag,
                                            events_per_s=rate, watermark_ms=self.watermark()))

    async def _offsets(self, consumer, admin) -> tuple[dict, dict]:
        end = await consumer.end_offsets(self._inputs) if self._inputs else {}
        offsets = await admin.list_consumer_group_offsets(self.group_id, partitions=self._inputs) \
            if self._inputs else {}
        return end, {tp: om.offset for tp, om in offsets.items()}


def superseding(keys: list, trend_suffix: bytes) -> tuple[list[int], dict[bytes, list[int]]]:
    """Which stats records of one fetch (by their keys, in offset order) change what the
    view holds once the fetch is applied: the last record of each key
    (`trust/category/window`; the merge publishes a key's windows in time order) and every
    record without a key, to parse now; and per key of the trend window (`trend_suffix`),
    its earlier records, which add trend points only (`LiveView.on_trend_records`; the
    `ALL` totals make none). A worker catching up on a backlog reads dozens of windows per
    key per fetch; parsing them all cost the worker's event loop a seventh of its time.
    Returns indexes, in order."""
    seen: set = set()
    kept = []
    trend: dict[bytes, list[int]] = {}
    totals_suffix = b"/ALL" + trend_suffix
    for i in range(len(keys) - 1, -1, -1):
        key = keys[i]
        if key is None:
            kept.append(i)
        elif key in seen:
            if key.endswith(trend_suffix) and not key.endswith(totals_suffix):
                trend.setdefault(key, []).append(i)
        else:
            seen.add(key)
            kept.append(i)
    kept.reverse()
    for indexes in trend.values():
        indexes.reverse()
    return kept, trend
