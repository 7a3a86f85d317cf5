"""The live processor on Kafka: two-level scale-out, crash recovery, exactly-once outputs.

Level 1 (`JoinStage`): a consumer group over the three co-partitioned input topics. Each
assigned partition gets a `streams.partition.PartitionJoin`; every fetched chunk is decoded
in one pass, fed source by source (a fixed order, so a chunk's effect is reproducible), and
released with the partition's watermark: the minimum over its three topics of (highest event
time - allowed lateness), leaving out topics that are caught up and have been quiet for
`idle_timeout` of wall-clock time (the only place wall clock enters). A partition whose topics
are all idle is released with the global watermark instead. Each chunk becomes one
`PartitionReport` (outcomes per released bucket, dead letters, the chunk's offsets and the
watermark it used) on the single-partition `callstream.partials` topic.

Level 2 (`MergeStage`): whichever worker owns `callstream.partials` runs the
`streams.aggregate.PartitionMerge`, closes every bucket all partitions have released, runs the
rules and publishes `calls.stats`, `calls.alerts` and `calls.deadletter`. The aggregation needs
every trust at once (all-trust windows, the data-gap rule, inhibition) and its input is
per-bucket outcomes, orders of magnitude fewer than events, hence one partition.

No loss, no double count, without Kafka transactions:
- a join's state is snapshotted (pickle, on the compacted `callstream.checkpoints` topic) with
  its input offsets and the partials offset of its last report; after a crash or a rebalance
  the new owner restores the snapshot and re-runs the chunks of the reports published since,
  from their recorded offsets and watermarks, without publishing them again: the join is
  deterministic, so it reaches exactly the state those reports left, and goes on from there;
- the merge applies each partition's reports once, in sequence (`seq`), and is itself a
  deterministic function of the partials topic; it snapshots its state with the partials
  offset and its output sequence number. Every output record carries that number in a
  `callstream-seq` header and goes to an explicit partition; after a restart the merge reads
  the last header of every output partition and skips what was already published.

Faust runs the worker (web server bound to 127.0.0.1, signals, logging, the control-room
feed); the two stages read with aiokafka's batch `getmany` inside it, because Faust's
per-event stream path measured 7,300 events/s on this machine against 395,000 for getmany,
and recovery needs exact control of offsets per chunk, which Faust streams do not give."""

from __future__ import annotations

import asyncio
from collections import deque
import logging
import pickle
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import orjson

from streams.aggregate import CollectingOutputs, PartitionMerge
from streams.events import DeadLetter, Event, decode
from streams.partition import PartitionJoin, PartitionReport, make_report
from streams.settings import ProcessingSettings
from streams.topics import TopicNames

log = logging.getLogger("callstream.live")

SEQ_HEADER = "callstream-seq"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
FETCH_RECORDS = 50_000
#: Per input partition and fetch: a few thousand events, so partitions advance together.
JOIN_FETCH_BYTES = 512 * 1024
#: A topic partition more than this much event time ahead of the slowest one still reading
#: is paused: the merge can only close what every partition has released, so running ahead
#: only piles up outcomes in memory (and in snapshots) and delays every window.
ALIGN_MS = 10 * 60_000


class InternalTopics(NamedTuple):
    partials: str
    checkpoints: str
    progress: str

    @classmethod
    def with_prefix(cls, prefix: str = "") -> "InternalTopics":
        return cls(f"{prefix}callstream.partials", f"{prefix}callstream.checkpoints",
                   f"{prefix}callstream.progress")


@dataclass
class LiveOptions:
    bootstrap: str
    topic_prefix: str
    group: str
    partitions: int
    settings: ProcessingSettings
    rules_factory: Callable[[], object | None]
    idle_timeout_s: float = 5.0
    checkpoint_every_s: float = 10.0
    on_alert: Callable[[dict], None] | None = None

    @property
    def topics(self) -> TopicNames:
        return TopicNames.with_prefix(self.topic_prefix)

    @property
    def internal(self) -> InternalTopics:
        return InternalTopics.with_prefix(self.topic_prefix)


def ensure_internal_topics(bootstrap: str, internal: InternalTopics) -> None:
    """Create the worker's own topics: one partition each; checkpoints compacted."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    try:
        existing = set(admin.list_topics())
        big = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}
        wanted = {
            internal.partials: {**big, "retention.ms": "-1"},
            internal.checkpoints: {**big, "cleanup.policy": "compact",
                                   "segment.ms": "60000", "min.cleanable.dirty.ratio": "0.05"},
            internal.progress: {"retention.ms": "3600000", "segment.ms": "600000"},
        }
        new = [NewTopic(name, 1, 1, topic_configs=cfg) for name, cfg in wanted.items()
               if name not in existing]
        if new:
            try:
                admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


def _partition_for(key: bytes | None, partitions: int) -> int:
    """Kafka's default partitioner (murmur2), so keyed output lands where any client would
    put it; the merge needs the partition up front to skip what a partition already holds."""
    if key is None or partitions == 1:
        return 0
    from kafka.partitioner.default import murmur2
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def _producer(bootstrap: str):
    from aiokafka import AIOKafkaProducer
    return AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                            max_request_size=MAX_MESSAGE_BYTES, linger_ms=5,
                            max_batch_size=1024 * 1024)


def _consumer(bootstrap: str, group: str | None = None,
              partition_fetch_bytes: int = MAX_MESSAGE_BYTES, **kw):
    from aiokafka import AIOKafkaConsumer
    return AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                            enable_auto_commit=False, auto_offset_reset="earliest",
                            max_partition_fetch_bytes=partition_fetch_bytes,
                            fetch_max_bytes=MAX_MESSAGE_BYTES, **kw)


def _pack(obj) -> bytes:
    """Snapshots: pickled, then compressed (response values and call ids compress well)."""
    return zlib.compress(pickle.dumps(obj, protocol=5), 1)


def _unpack(blob: bytes):
    return pickle.loads(zlib.decompress(blob))


async def _read_ranges(bootstrap: str, ranges: list[tuple[str, int, int, int | None]]
                       ) -> list[list]:
    """The records of several topic partitions, each from its start up to its end (None:
    its end now), with one consumer."""
    from aiokafka import TopicPartition
    tps = [TopicPartition(t, p) for t, p, _, _ in ranges]
    out: list[list] = [[] for _ in ranges]
    c = _consumer(bootstrap)
    await c.start()
    try:
        c.assign(tps)
        ends_now = await c.end_offsets(tps)
        todo = {}
        for i, (tp, (_, _, start, end)) in enumerate(zip(tps, ranges)):
            end = ends_now[tp] if end is None else end
            if max(start, 0) < end:
                c.seek(tp, max(start, 0))
                todo[tp] = (i, end)
        deadline = time.monotonic() + 120
        while todo:
            if time.monotonic() > deadline:
                left = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in todo)
                raise RuntimeError(f"could not re-read {left} within 120 s")
            got = await c.getmany(*todo, timeout_ms=1000, max_records=FETCH_RECORDS)
            for tp, msgs in got.items():
                i, end = todo[tp]
                out[i].extend(m for m in msgs if m.offset < end)
                if msgs and msgs[-1].offset + 1 >= end:
                    del todo[tp]
            for tp in list(todo):
                if tp not in got and await c.position(tp) >= todo[tp][1]:
                    del todo[tp]
        return out
    finally:
        await c.stop()


async def load_checkpoints(bootstrap: str, topic: str) -> dict[bytes, bytes]:
    """Latest value per key of the compacted checkpoint topic."""
    latest: dict[bytes, bytes] = {}
    for m in (await _read_ranges(bootstrap, [(topic, 0, 0, None)]))[0]:
        latest[m.key] = m.value
    return latest


# -- level 1 -------------------------------------------------------------------------------
@dataclass
class _Partition:
    join: PartitionJoin
    seq: int = 0
    offsets: list[int] = field(default_factory=lambda: [0, 0, 0])
    partials_offset: int = -1            # offset of this partition's last acked report
    last_seen: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    last_watermark: int | None = None
    last_snapshot: float = 0.0
    #: (wall time first seen, watermark) that only idleness allows, oldest first
    candidates: deque = field(default_factory=deque)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["candidates"] = deque()          # wall-clock bookkeeping: not carried over
        return state


def feed_chunk(pj: PartitionJoin, chunk: list[list], max_bytes: int) -> None:
    """Decode and feed one chunk of a partition: source 0, 1, 2, each in offset order."""
    partition = pj.partition
    for s, msgs in enumerate(chunk):
        for m in msgs:
            raw = m.value if m.value is not None else b""
            r = decode(raw, m.topic, m.offset, max_bytes)
            if type(r) is Event:
                pj.feed(r, s)
            else:
                pj.reject(DeadLetter(r.reason, r.detail, m.topic, m.offset, raw, "offset",
                                     partition, m.key))


class JoinStage:
    """Consumes the input topics; one `PartitionJoin` per assigned partition."""

    def __init__(self, opts: LiveOptions, producer, state: "LiveState") -> None:
        self.opts = opts
        self.producer = producer
        self.state = state
        self.parts: dict[int, _Partition] = {}
        self.consumer = None
        self.sources = list(opts.topics.inputs)
        self.max_bytes = opts.settings.max_record_bytes
        self._lock = asyncio.Lock()
        self._last_commit = 0.0

    async def start(self) -> None:
        from aiokafka import ConsumerRebalanceListener
        from aiokafka.coordinator.assignors.range import RangePartitionAssignor
        stage = self

        class Listener(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked):
                await stage.revoke({tp.partition for tp in revoked})

            async def on_partitions_assigned(self, assigned):
                await stage.assign(sorted({tp.partition for tp in assigned}))

        # the range assignor gives a consumer the same partition numbers of every input
        # topic: the co-partitioning the per-call join relies on
        self.consumer = _consumer(self.opts.bootstrap, f"{self.opts.group}-join",
                                  partition_fetch_bytes=JOIN_FETCH_BYTES,
                                  partition_assignment_strategy=(RangePartitionAssignor,),
                                  max_poll_interval_ms=600_000, session_timeout_ms=15_000,
                                  heartbeat_interval_ms=1_000)
        await self.consumer.start()
        self.consumer.subscribe(self.sources, listener=Listener())

    async def stop(self) -> None:
        if self.consumer is not None:
            async with self._lock:
                for p in list(self.parts):
                    await self.snapshot(p)
                self.parts.clear()
            await self.consumer.stop()

    # -- rebalance -------------------------------------------------------------------------
    async def revoke(self, partitions: set[int]) -> None:
        async with self._lock:
            for p in sorted(partitions & set(self.parts)):
                await self.snapshot(p)
                del self.parts[p]
                log.info("join: partition %d handed over", p)
            self.state.partitions = sorted(self.parts)

    async def assign(self, partitions: list[int]) -> None:
        from aiokafka import TopicPartition
        async with self._lock:
            fresh = [p for p in partitions if p not in self.parts]
            if not fresh:
                return
            checkpoints = await load_checkpoints(self.opts.bootstrap, self.opts.internal.checkpoints)
            saved = {p: _unpack(checkpoints[b"join/%d" % p]) if b"join/%d" % p in checkpoints
                     else _Partition(PartitionJoin(p, self.opts.settings)) for p in fresh}
            since = min(part.partials_offset for part in saved.values()) + 1
            published = (await _read_ranges(self.opts.bootstrap,
                                            [(self.opts.internal.partials, 0, since, None)]))[0]
            for p in fresh:
                part = await self.recover(saved[p], published)
                now = time.monotonic()
                part.last_seen = [now, now, now]
                self.parts[p] = part
                for s, topic in enumerate(self.sources):
                    self.consumer.seek(TopicPartition(topic, p), part.offsets[s])
                log.info("join: partition %d from offsets %s (report %d)", p, part.offsets,
                         part.seq)
            self.state.partitions = sorted(self.parts)

    async def recover(self, part: _Partition, published: list) -> _Partition:
        """A snapshot, then the chunks of every report published after it, redone."""
        key = b"%d" % part.join.partition
        reports = [r for r in (pickle.loads(m.value) for m in published
                               if m.key == key and m.offset > part.partials_offset)
                   if r.seq > part.seq]
        if reports:
            await self._redo(part, reports)
            log.info("join: partition %d redid %d reports after its snapshot",
                     part.join.partition, len(reports))
        return part

    async def _redo(self, part: _Partition, reports: list[PartitionReport]) -> None:
        """Feed and release each report's chunk again, exactly as the first time."""
        p = part.join.partition
        records = await _read_ranges(self.opts.bootstrap, [
            (topic, p, part.offsets[s], reports[-1].offsets[s])
            for s, topic in enumerate(self.sources)])
        taken = [0, 0, 0]
        for rep in reports:
            chunk: list[list] = [[], [], []]
            for s in range(3):
                msgs = records[s]
                i = taken[s]
                while i < len(msgs) and msgs[i].offset < rep.offsets[s]:
                    i += 1
                chunk[s] = msgs[taken[s]:i]
                taken[s] = i
            feed_chunk(part.join, chunk, self.max_bytes)
            part.join.release(rep.watermark)
            part.join.dead_letters = []          # published with the report already
            part.seq = rep.seq
            part.offsets = list(rep.offsets)
            part.last_watermark = rep.watermark

    async def snapshot(self, p: int) -> None:
        part = self.parts.get(p)
        if part is None:
            return
        part.last_snapshot = time.monotonic()
        await self.producer.send_and_wait(self.opts.internal.checkpoints, _pack(part),
                                          key=b"join/%d" % p)

    def _align(self) -> None:
        """Pause the topic partitions that run ahead in event time of the slowest one that
        still has records to read; resume them once it has caught up."""
        from aiokafka import TopicPartition
        rows = []
        for p, part in self.parts.items():
            for s, topic in enumerate(self.sources):
                tp = TopicPartition(topic, p)
                high = self.consumer.highwater(tp)
                reading = high is None or part.offsets[s] < high
                rows.append((tp, part.join.source_max[s], reading))
        behind = [m if m is not None else -1 for _, m, reading in rows if reading]
        if not behind:
            pause, resume = [], [tp for tp, _, _ in rows]
        else:
            low = min(behind)
            pause = [tp for tp, m, _ in rows if m is not None and m > low + ALIGN_MS]
            resume = [tp for tp, m, _ in rows if m is None or m <= low + ALIGN_MS]
        paused = self.consumer.paused()
        if pause:
            self.consumer.pause(*[tp for tp in pause if tp not in paused])
        back = [tp for tp in resume if tp in paused]
        if back:
            self.consumer.resume(*back)

    # -- the loop --------------------------------------------------------------------------
    def _watermark(self, part: _Partition, now: float) -> int | None:
        """The partition's watermark: the minimum over its three topics, unless some are
        idle (caught up and silent for `idle_timeout`); a watermark that only idleness
        allows is used once it has itself been known for `idle_timeout`, so the data a
        quiet topic is about to receive (published with what moved the watermark) is
        fetched before the watermark passes it."""
        from aiokafka import TopicPartition
        timeout = self.opts.idle_timeout_s
        idle = []
        for s, topic in enumerate(self.sources):
            high = self.consumer.highwater(TopicPartition(topic, part.join.partition))
            caught_up = high is not None and part.offsets[s] >= high
            idle.append(caught_up and now - part.last_seen[s] >= timeout)
        strict = part.join.own_watermark()
        if all(idle):
            g = self.state.global_watermark
            relaxed = g if strict is None or (g is not None and g > strict) else strict
        elif any(idle):
            relaxed = part.join.own_watermark(idle)
        else:
            relaxed = strict
        if relaxed is None or (strict is not None and relaxed <= strict):
            part.candidates.clear()
            return strict
        cands = part.candidates
        if not cands or relaxed > cands[-1][1]:
            cands.append((now, relaxed))
        usable = None
        while cands and now - cands[0][0] >= timeout:
            usable = cands.popleft()[1]
        if usable is not None:
            cands.appendleft((now - timeout, usable))   # keep it usable
        if usable is None:
            return strict if part.last_watermark is None or (
                strict is not None and strict > part.last_watermark) else part.last_watermark
        return usable if strict is None or usable > strict else strict

    async def run_once(self) -> int:
        """One fetch: feed, release, report. Returns the number of input records."""
        from aiokafka import TopicPartition
        data = await self.consumer.getmany(timeout_ms=100, max_records=FETCH_RECORDS)
        n = 0
        async with self._lock:
            now = time.monotonic()
            chunks: dict[int, list[list]] = {}
            index = {t: s for s, t in enumerate(self.sources)}
            for tp, msgs in data.items():
                part = self.parts.get(tp.partition)
                if part is None or not msgs:
                    continue
                s = index[tp.topic]
                if msgs[0].offset < part.offsets[s]:
                    # fetched before a rebalance handed this partition back: already read
                    msgs = [m for m in msgs if m.offset >= part.offsets[s]]
                    if not msgs:
                        continue
                chunks.setdefault(tp.partition, [[], [], []])[s] = msgs
                n += len(msgs)
            sends = []
            for p, part in self.parts.items():
                chunk = chunks.get(p)
                if chunk is not None:
                    feed_chunk(part.join, chunk, self.max_bytes)
                    for s, msgs in enumerate(chunk):
                        if msgs:
                            part.offsets[s] = msgs[-1].offset + 1
                            part.last_seen[s] = now
                wm = self._watermark(part, now)
                if chunk is None and wm == part.last_watermark:
                    continue
                part.last_watermark = wm
                buckets = part.join.release(wm)
                part.seq += 1
                report = make_report(part.join, part.seq, tuple(part.offsets), wm, buckets)
                fut = await self.producer.send(self.opts.internal.partials,
                                               pickle.dumps(report, protocol=5),
                                               key=b"%d" % p, partition=0)
                sends.append((part, fut))
            for part, fut in sends:
                md = await fut
                part.partials_offset = md.offset
            for p, part in self.parts.items():
                if now - part.last_snapshot >= self.opts.checkpoint_every_s:
                    await self.snapshot(p)
            self._align()
            if now - self._last_commit >= 0.5 and self.parts:
                # committed offsets are for people (consumer lag on the dashboard and in
                # kafka-consumer-groups); recovery seeks to the snapshot's own offsets
                self._last_commit = now
                try:
                    await self.consumer.commit({
                        TopicPartition(topic, p): part.offsets[s]
                        for p, part in self.parts.items() for s, topic in enumerate(self.sources)})
                except Exception as exc:        # a rebalance under way: the next one will do
                    log.debug("offset commit skipped: %s", exc)
        self.state.events += n
        return n


# -- level 2 -------------------------------------------------------------------------------
@dataclass
class _MergeCheckpoint:
    merge: PartitionMerge
    next_offset: int
    out_seq: int


class MergeStage:
    """Consumes `callstream.partials` (one partition: one active merge in the group)."""

    def __init__(self, opts: LiveOptions, producer, state: "LiveState") -> None:
        self.opts = opts
        self.producer = producer
        self.state = state
        self.consumer = None
        self.cp: _MergeCheckpoint | None = None
        self.outputs = CollectingOutputs()
        self.published: dict[tuple[str, int], int] = {}     # (topic, partition) -> last seq
        self.out_partitions: dict[str, int] = {}
        self.last_snapshot = 0.0
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        from aiokafka import ConsumerRebalanceListener
        stage = self

        class Listener(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked):
                await stage.revoke()

            async def on_partitions_assigned(self, assigned):
                if assigned:
                    await stage.assign()

        self.consumer = _consumer(self.opts.bootstrap, f"{self.opts.group}-merge",
                                  max_poll_interval_ms=600_000, session_timeout_ms=15_000,
                                  heartbeat_interval_ms=1_000)
        await self.consumer.start()
        self.consumer.subscribe([self.opts.internal.partials], listener=Listener())

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.revoke()
            await self.consumer.stop()

    async def revoke(self) -> None:
        async with self._lock:
            if self.cp is not None:
                await self.snapshot()
                self.cp = None
                self.state.merge = None
                log.info("merge: handed over")

    async def assign(self) -> None:
        from aiokafka import TopicPartition
        async with self._lock:
            if self.cp is not None:
                return
            saved = (await load_checkpoints(self.opts.bootstrap,
                                            self.opts.internal.checkpoints)).get(b"merge")
            if saved is not None:
                cp: _MergeCheckpoint = _unpack(saved)
                cp.merge.attach(self.outputs)
            else:
                cp = _MergeCheckpoint(PartitionMerge(self.opts.settings, self.outputs,
                                                     self.opts.rules_factory(),
                                                     self.opts.partitions), 0, 0)
            await self._read_published()
            self.cp = cp
            self.state.merge = cp.merge
            self.consumer.seek(TopicPartition(self.opts.internal.partials, 0), cp.next_offset)
            log.info("merge: from partials offset %d, output record %d", cp.next_offset,
                     cp.out_seq)

    async def _read_published(self) -> None:
        """The last `callstream-seq` of every output partition: what is already out."""
        from aiokafka import TopicPartition
        topics = self.opts.topics
        c = _consumer(self.opts.bootstrap)
        await c.start()
        try:
            tps = []
            await c.topics()                                  # fetches the metadata
            for t in (topics.stats, topics.alerts, topics.deadletter):
                parts = c.partitions_for_topic(t) or {0}
                self.out_partitions[t] = len(parts)
                tps += [TopicPartition(t, i) for i in sorted(parts)]
            c.assign(tps)
            ends = await c.end_offsets(tps)
            waiting = []
            for tp in tps:
                if ends[tp] > 0:
                    c.seek(tp, ends[tp] - 1)
                    waiting.append(tp)
            deadline = time.monotonic() + 30
            while waiting and time.monotonic() < deadline:
                got = await c.getmany(*waiting, timeout_ms=1000)
                for tp, msgs in got.items():
                    for m in msgs:
                        seq = dict(m.headers or ()).get(SEQ_HEADER)
                        if seq is not None:
                            self.published[(tp.topic, tp.partition)] = int(seq)
                    if msgs and msgs[-1].offset >= ends[tp] - 1 and tp in waiting:
                        waiting.remove(tp)
        finally:
            await c.stop()

    async def snapshot(self) -> None:
        cp = self.cp
        if cp is None:
            return
        cp.merge.attach(None)
        try:
            blob = _pack(cp)
        finally:
            cp.merge.attach(self.outputs)
        await self.producer.send_and_wait(self.opts.internal.checkpoints, blob, key=b"merge")
        self.last_snapshot = time.monotonic()

    async def run_once(self) -> int:
        data = await self.consumer.getmany(timeout_ms=100, max_records=5_000)
        async with self._lock:
            cp = self.cp
            if cp is None:
                return 0
            n = 0
            for msgs in data.values():
                for m in msgs:
                    cp.merge.take(pickle.loads(m.value))
                    cp.next_offset = m.offset + 1
                    n += 1
            if n:
                cp.merge.advance()
                await self._publish()
                g = cp.merge.global_watermark
                if g is not None and g != self.state.global_watermark:
                    self.state.global_watermark = g
                    await self.producer.send(self.opts.internal.progress,
                                             orjson.dumps({"watermark": g}), partition=0)
            if time.monotonic() - self.last_snapshot >= self.opts.checkpoint_every_s:
                await self.snapshot()
            return n

    async def _publish(self) -> None:
        out = self.outputs
        topics = self.opts.topics
        cp = self.cp
        futures = []

        async def send(topic: str, key: bytes | None, value: bytes) -> None:
            cp.out_seq += 1
            part = _partition_for(key, self.out_partitions.get(topic, 1))
            if cp.out_seq <= self.published.get((topic, part), 0):
                return                                   # out before the restart
            futures.append(await self.producer.send(
                topic, value, key=key, partition=part,
                headers=[(SEQ_HEADER, b"%d" % cp.out_seq)]))

        for letter in out.dead_letters:
            await send(topics.deadletter, letter.key, letter.to_json())
        for rec in out.stats_records:
            await send(topics.stats, stats_key(rec), orjson.dumps(rec))
        for rec in out.alert_records:
            await send(topics.alerts, str(rec.get("fingerprint", "")).encode(),
                       orjson.dumps(rec))
            if self.opts.on_alert is not None:
                self.opts.on_alert(rec)
        self.state.dead_letters += len(out.dead_letters)
        self.state.stats += len(out.stats_records)
        self.state.alerts += len(out.alert_records)
        out.dead_letters.clear()
        out.stats_records.clear()
        out.alert_records.clear()
        for f in futures:
            await f


def stats_key(record: dict) -> bytes:
    return f"{record['trust']}/{record['category']}/{record['window']}".encode()


# -- the worker's live state -----------------------------------------------------------------
class LiveState:
    """What /health and the dashboard read; the global watermark hint for idle partitions."""

    def __init__(self) -> None:
        self.events = 0
        self.stats = 0
        self.alerts = 0
        self.dead_letters = 0
        self.global_watermark: int | None = None
        self.merge: PartitionMerge | None = None
        self.partitions: list[int] = []          # input partitions joined here

    def health(self) -> dict:
        m = self.merge
        out = {"events": self.events, "stats": self.stats, "alerts": self.alerts,
               "dead_letters": self.dead_letters, "partitions": self.partitions,
               "global_watermark": self.global_watermark, "merge": m is not None}
        if m is not None:
            out["closed_through"] = m.frontier
            out["summary"] = m.summary()
        return out


class LiveProcessor:
    """Both stages and the progress reader, run as one task of the Faust app."""

    def __init__(self, opts: LiveOptions) -> None:
        self.opts = opts
        self.state = LiveState()
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()

    @property
    def watermark(self) -> int | None:
        m = self.state.merge
        return m.frontier if m is not None else self.state.global_watermark

    async def run(self) -> None:
        opts = self.opts
        producer = _producer(opts.bootstrap)
        await producer.start()
        join = JoinStage(opts, producer, self.state)
        merge = MergeStage(opts, producer, self.state)
        try:
            await join.start()
            await merge.start()
            log.info("live processor started: group %s, %d partitions", opts.group,
                     opts.partitions)
            await asyncio.gather(self._loop(join.run_once), self._loop(merge.run_once),
                                 self._progress())
        finally:
            try:
                await join.stop()
                await merge.stop()
                await producer.stop()
            finally:
                self._stopped.set()

    async def _loop(self, step) -> None:
        try:
            while not self._stopping.is_set():
                await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            # a broken stage must not leave a worker that looks alive and does nothing
            log.exception("live processor failed; stopping the worker")
            self._stopping.set()
            import os
            import signal
            os.kill(os.getpid(), signal.SIGTERM)
            raise

    async def _progress(self) -> None:
        """Follow the merge's global watermark (it may run on another worker)."""
        from aiokafka import TopicPartition
        tp = TopicPartition(self.opts.internal.progress, 0)
        c = _consumer(self.opts.bootstrap)
        await c.start()
        try:
            c.assign([tp])
            end = (await c.end_offsets([tp]))[tp]
            c.seek(tp, max(0, end - 1))
            while not self._stopping.is_set():
                got = await c.getmany(tp, timeout_ms=200)
                for m in got.get(tp, []):
                    g = orjson.loads(m.value).get("watermark")
                    if self.state.merge is None and g is not None:
                        self.state.global_watermark = g
        finally:
            await c.stop()

    async def stop(self) -> None:
        """Snapshot everything and leave the groups (a clean SIGTERM)."""
        self._stopping.set()
        try:
            await asyncio.wait_for(self._stopped.wait(), 30)
        except asyncio.TimeoutError:
            log.warning("live processor did not stop within 30 s")
