"""The live processor on Kafka: two-level scale-out, crash recovery, exactly-once outputs.

Level 1 (`JoinStage`): a consumer group over the three co-partitioned input topics. Each
assigned partition gets a `streams.fast.partjoin.ColumnarPartitionJoin` (the reorder buffer
and per-call join of `streams.partition.PartitionJoin`, its reference, in Numba kernels over
arrays); fetched record batches are read as columns (`streams.rawfetch`: one Numba pass per
fetch, no object per record), every chunk is scanned in one pass per topic (the reference
decoder for what the scanner is not sure of), fed source by source (a fixed order,
so a chunk's effect is reproducible) in one kernel call, and released with the partition's
watermark in another: the minimum over its three topics of (highest event time - allowed
lateness), leaving out topics that are caught up and have been quiet for `idle_timeout` of
wall-clock time (the only place wall clock enters). A partition whose topics are all idle
is released with the global watermark instead. Each chunk becomes one `PartitionReport`
(outcomes per released bucket, dead letters, the chunk's offsets and the watermark it used)
on the single-partition `callstream.partials` topic.

Level 2 (`MergeStage`): whichever worker owns `callstream.partials` runs the
`streams.aggregate.PartitionMerge`, closes every bucket all partitions have released, runs the
rules and publishes `calls.stats`, `calls.alerts` and `calls.deadletter`. The aggregation needs
every trust at once (all-trust windows, the data-gap rule, inhibition) and its input is
per-bucket outcomes, orders of magnitude fewer than events, hence one partition. Each worker
runs its merge stage in a child process (`MergeProcess`), so closing windows and running the
rules take a second core instead of turns with the joins on one event loop.

Flow control: fetched records are buffered per topic partition and fed no more than
`ALIGN_MS` ahead of the slowest one still reading (`JoinStage._take_aligned`), so a backlog
is read in step across partitions and the merge can close windows as it goes.

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
import gc
import logging
import pickle
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np
import orjson

from streams.aggregate import PartitionMerge, TextOutputs
from streams.childproc import die_with_parent
from streams.events import DeadLetter, Event
from streams.fast.partjoin import ColumnarPartitionJoin
from streams.fast.recordbatch import RecordRun
from streams.fast.records import RecordDecoder
from streams import rawfetch
from streams.partition import PartitionJoin, PartitionReport, make_report
from streams.settings import ProcessingSettings
from streams.topics import TopicNames

log = logging.getLogger("callstream.live")

SEQ_HEADER = "callstream-seq"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
FETCH_RECORDS = 50_000
#: Per input partition and fetch: a few thousand events, so partitions advance together.
JOIN_FETCH_BYTES = 512 * 1024
#: Records are fed no more than this much record (event) time ahead of the point every topic
#: partition still reading has records up to: the merge can only close what every partition
#: has released, so running ahead only piles up outcomes in memory (and in snapshots) and
#: delays every window.
ALIGN_MS = 10 * 60_000
#: Nor more than this ahead of what the merge has closed (+ the allowed lateness): what keeps
#: a worker from running away from partitions joined elsewhere, and bounds the outcomes the
#: merge holds unclosed. Days, not hours: the joins learn the merge's progress a step late
#: (a step closes up to `CLOSE_BATCH` buckets), and at 6 h a backlog's joins stalled on it
#: every few hundred ms, idling a fifth of the machine (one worker 84k -> 104-113k events/s
#: with 7 d; peak RSS +60-80 MB on the benchmark's log, 3,500 events per hour of event time).
AHEAD_OF_MERGE_MS = 7 * 24 * 3_600_000
#: Buckets the merge closes per step before it lets its event loop run (heartbeats).
CLOSE_BATCH = 240
#: Fetched records held back per topic partition (for alignment) before it is paused; it
#: is resumed at half. Pausing is what costs: aiokafka holds the next fetch from a broker for
#: 100 ms while records of a paused partition (an in-flight response) sit unconsumed.
HOLD_RECORDS = 10_000
#: Collector thresholds while the stages run (CPython's default is 700, 10, 10).
GC_THRESHOLDS = (100_000, 50, 100)


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
class _Pending:
    """Fetched records of one topic partition not fed yet: runs, oldest first."""

    __slots__ = ("runs", "count")

    def __init__(self) -> None:
        self.runs: deque[RecordRun] = deque()
        self.count = 0

    def __bool__(self) -> bool:
        return self.count > 0

    def add(self, run: RecordRun) -> None:
        if len(run):
            self.runs.append(run)
            self.count += len(run)

    @property
    def last_offset(self) -> int:
        return int(self.runs[-1].offsets[-1])

    @property
    def first_timestamp(self) -> int:
        return int(self.runs[0].timestamps[0])

    @property
    def last_timestamp(self) -> int:
        return int(self.runs[-1].timestamps[-1])

    def take_through(self, limit: int) -> RecordRun | None:
        """The leading records stamped at or before `limit` (up to the first that is not),
        as one run; None if there are none."""
        taken: list[RecordRun] = []
        runs = self.runs
        while runs:
            run = runs[0]
            over = run.timestamps > limit
            k = int(over.argmax()) if over.any() else len(run)
            if k:
                taken.append(run[:k])
            if k < len(run):
                runs[0] = run[k:]
                break
            runs.popleft()
        if not taken:
            return None
        run = RecordRun.concat(taken)
        self.count -= len(run)
        return run


def _fresh_pending() -> list[_Pending]:
    return [_Pending(), _Pending(), _Pending()]


@dataclass
class _Partition:
    join: ColumnarPartitionJoin | PartitionJoin     # the latter from older snapshots
    seq: int = 0
    offsets: list[int] = field(default_factory=lambda: [0, 0, 0])
    partials_offset: int = -1            # offset of this partition's last acked report
    last_seen: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    last_watermark: int | None = None
    last_snapshot: float = 0.0
    #: (wall time first seen, watermark) that only idleness allows, oldest first
    candidates: deque = field(default_factory=deque)
    #: fetched records not fed yet (held back to keep partitions aligned), per source
    pending: list[_Pending] = field(default_factory=_fresh_pending)
    #: record timestamp of the last record fed, per source
    last_stamp: list = field(default_factory=lambda: [None, None, None])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["candidates"] = deque()          # wall-clock bookkeeping: not carried over
        state["pending"] = None                # not fed: fetched again from the offsets
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.pending = _fresh_pending()
        self.__dict__.setdefault("last_stamp", [None, None, None])   # older snapshots


def _stamp(t: int | None) -> int:
    return -1 if t is None else t


def feed_chunk(pj: ColumnarPartitionJoin | PartitionJoin, chunk: list[RecordRun | None],
               decoder: RecordDecoder) -> None:
    """Decode and feed one chunk of a partition: source 0, 1, 2, each a run in offset order
    (or None). A `PartitionJoin` (the reference; restored from a snapshot taken before the
    columnar join) is fed event by event."""
    if type(pj) is ColumnarPartitionJoin:
        pj.feed_chunk(chunk, decoder)
        return
    partition = pj.partition
    feed = pj.feed
    for s, run in enumerate(chunk):
        if not run:
            continue
        topic = run.topic
        raws = run.values()
        offsets = run.offsets.tolist()
        decoded = decoder.decode(raws, topic, offsets)
        for i, (raw, r) in enumerate(zip(raws, decoded)):
            if type(r) is Event:
                feed(r, s)
            else:
                pj.reject(DeadLetter(r.reason, r.detail, topic, offsets[i], raw, "offset",
                                     partition, run.key(i)))


class JoinStage:
    """Consumes the input topics; one partition join per assigned partition."""

    def __init__(self, opts: LiveOptions, producer, state: "LiveState",
                 decoder: RecordDecoder) -> None:
        self.opts = opts
        self.producer = producer
        self.state = state
        self.parts: dict[int, _Partition] = {}
        self.consumer = None
        self.sources = list(opts.topics.inputs)
        self.source_index = {t: s for s, t in enumerate(self.sources)}
        self.decoder = decoder
        self._lock = asyncio.Lock()
        self._last_commit = 0.0
        #: reports sent and not yet known to be acknowledged, in send order
        self._in_flight: list[tuple[_Partition, asyncio.Future]] = []

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
        rawfetch.install()
        self.consumer = _consumer(self.opts.bootstrap, f"{self.opts.group}-join",
                                  partition_fetch_bytes=JOIN_FETCH_BYTES,
                                  value_deserializer=rawfetch.RAW_RUNS,
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
            checkpoints = await load_checkpoints(self.opts.bootstrap,
                                                 self.opts.internal.checkpoints)
            saved = {p: _unpack(checkpoints[b"join/%d" % p]) if b"join/%d" % p in checkpoints
                     else _Partition(ColumnarPartitionJoin(p, self.opts.settings))
                     for p in fresh}
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
        runs = [RecordRun.from_records(topic, p, records[s])
                for s, topic in enumerate(self.sources)]
        taken = [0, 0, 0]
        for rep in reports:
            chunk: list[RecordRun | None] = [None, None, None]
            for s in range(3):
                i = int(np.searchsorted(runs[s].offsets, rep.offsets[s]))
                if i > taken[s]:
                    chunk[s] = runs[s][taken[s]:i]
                taken[s] = i
            feed_chunk(part.join, chunk, self.decoder)
            part.join.release(rep.watermark)
            part.join.dead_letters = []          # published with the report already
            part.seq = rep.seq
            part.offsets = list(rep.offsets)
            part.last_watermark = rep.watermark

    async def _settle(self) -> None:
        """Wait for the reports in flight to be acknowledged, and note their offsets."""
        in_flight, self._in_flight = self._in_flight, []
        for part, fut in in_flight:
            md = await fut
            part.partials_offset = md.offset

    async def snapshot(self, p: int) -> None:
        # a snapshot names the partials offset of its last report: that report must be on
        # the topic first
        await self._settle()
        part = self.parts.get(p)
        if part is None:
            return
        part.last_snapshot = time.monotonic()
        await self.producer.send_and_wait(self.opts.internal.checkpoints, _pack(part),
                                          key=b"join/%d" % p)

    def _take_aligned(self, data: dict) -> dict[int, list[RecordRun | None]]:
        """Buffer what was fetched; return, per partition, the records to feed now: those
        no more than `ALIGN_MS` of record time (event time, as producers stamp it; only
        flow control depends on it, never a result) ahead of the point every topic partition
        still reading has records up to. A topic partition holding `HOLD_RECORDS` is paused
        until it is down to half; its records are already out of the consumer's buffer, so
        the pause never holds back fetching for the others (aiokafka does not fetch from a
        broker while unconsumed records of any of its partitions remain)."""
        from aiokafka import TopicPartition
        index = self.source_index
        for tp, runs in data.items():
            part = self.parts.get(tp.partition)
            if part is None:
                continue
            s = index[tp.topic]
            queue = part.pending[s]
            for run in runs:
                if not len(run):
                    continue
                expected = queue.last_offset + 1 if queue else part.offsets[s]
                if run.offsets[0] < expected:
                    # fetched before a rebalance handed this partition back: already read
                    run = run[int(np.searchsorted(run.offsets, expected)):]
                queue.add(run)
        low = None
        for p, part in self.parts.items():
            for s, topic in enumerate(self.sources):
                queue = part.pending[s]
                if queue:
                    t = queue.last_timestamp
                else:
                    high = self.consumer.highwater(TopicPartition(topic, p))
                    if high is not None and part.offsets[s] >= high:
                        continue                        # caught up: holds nothing back
                    t = _stamp(part.last_stamp[s])
                if low is None or t < low:
                    low = t
        bound = None if low is None else low + ALIGN_MS
        closed = self.state.merge_closed
        if bound is not None and closed is not None:
            # partitions joined on other workers are not in `low`: the merge's progress
            # keeps this worker from running away from them (and the joins from the merge)
            bound = min(bound, closed + self.opts.settings.allowed_lateness_ms
                        + AHEAD_OF_MERGE_MS)
        # whatever the bounds, the slowest topic partition with records waiting takes its
        # next one: a sparse topic's next record can lie hours ahead, and holding it back
        # would hold back the watermark, the merge and so the bounds themselves
        slowest = min((_stamp(part.last_stamp[s]) for part in self.parts.values()
                       for s in range(3) if part.pending[s]), default=None)
        chunks: dict[int, list[RecordRun | None]] = {}
        pause, resume = [], []
        for p, part in self.parts.items():
            chunk: list[RecordRun | None] = [None, None, None]
            for s, topic in enumerate(self.sources):
                queue = part.pending[s]
                limit = bound
                if queue and _stamp(part.last_stamp[s]) == slowest:
                    limit = max(limit, queue.first_timestamp + ALIGN_MS)
                if queue and limit is not None:
                    run = queue.take_through(limit)
                    if run is not None:
                        chunk[s] = run
                        part.last_stamp[s] = int(run.timestamps[-1])
                if queue.count >= HOLD_RECORDS:
                    pause.append(TopicPartition(topic, p))
                elif queue.count <= HOLD_RECORDS // 2:
                    resume.append(TopicPartition(topic, p))
            if chunk[0] is not None or chunk[1] is not None or chunk[2] is not None:
                chunks[p] = chunk
        paused = self.consumer.paused()
        ahead = [tp for tp in pause if tp not in paused]
        if ahead:
            self.consumer.pause(*ahead)
        back = [tp for tp in resume if tp in paused]
        if back:
            self.consumer.resume(*back)
        return chunks

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
        known = now
        if all(idle):
            g = self.state.global_watermark
            relaxed = g if strict is None or (g is not None and g > strict) else strict
            if relaxed == g:
                # known since this worker learned it (the partition may have gone quiet
                # after that): a log read to its end closes its last windows one timeout
                # after the input stops, not two
                known = min(now, self.state.global_since)
        elif any(idle):
            relaxed = part.join.own_watermark(idle)
        else:
            relaxed = strict
        if relaxed is None or (strict is not None and relaxed <= strict):
            part.candidates.clear()
            return strict
        cands = part.candidates
        if not cands or relaxed > cands[-1][1]:
            while cands and cands[-1][0] >= known:
                cands.pop()                 # higher and known as long: no longer needed
            cands.append((known, relaxed))
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
        # records held back wait for the merge's progress, not for more input: look again soon
        held = any(q for part in self.parts.values() for q in part.pending)
        data = await self.consumer.getmany(timeout_ms=10 if held else 100)
        async with self._lock:
            now = time.monotonic()
            chunks = self._take_aligned(data)
            n = sum(len(run) for chunk in chunks.values() for run in chunk if run is not None)
            sends = []
            for p, part in self.parts.items():
                chunk = chunks.get(p)
                if chunk is not None:
                    feed_chunk(part.join, chunk, self.decoder)
                    for s, run in enumerate(chunk):
                        if run is not None:
                            part.offsets[s] = int(run.offsets[-1]) + 1
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
            # the previous fetch's reports: acknowledged while this one was processed, as a
            # rule; waiting for this fetch's own would idle the loop for a round trip
            await self._settle()
            self._in_flight = sends
            for p, part in self.parts.items():
                if now - part.last_snapshot >= self.opts.checkpoint_every_s:
                    await self.snapshot(p)
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
        self.outputs = TextOutputs()
        self.published: dict[tuple[str, int], int] = {}     # (topic, partition) -> last seq
        self.out_partitions: dict[str, int] = {}
        self.last_snapshot = 0.0
        self._lock = asyncio.Lock()
        self._more = False               # closable buckets left after the last step
        self._told: tuple = (None, None)     # last (global watermark, closed) on progress
        self._in_flight: list = []           # output batches sent, not yet acknowledged

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

    async def _settle(self) -> None:
        """Wait for the output batches in flight to be acknowledged."""
        in_flight, self._in_flight = self._in_flight, []
        for f in in_flight:
            await f

    async def snapshot(self) -> None:
        # what the snapshot counts as published (`out_seq`) must be on the topics: a restart
        # from it skips those records, and never makes them again
        await self._settle()
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
        data = await self.consumer.getmany(timeout_ms=0 if self._more else 100,
                                           max_records=5_000)
        async with self._lock:
            cp = self.cp
            if cp is None:
                self._more = False
                return 0
            n = 0
            for msgs in data.values():
                for m in msgs:
                    cp.merge.take(pickle.loads(m.value))
                    cp.next_offset = m.offset + 1
                    n += 1
            if n or self._more:
                # a bounded run of closes per step: a backlog closed in one go kept the loop
                # from heartbeating past the session timeout, and the group gave the
                # partials to another merge while this one was still publishing
                self._more = cp.merge.advance(limit=CLOSE_BATCH) >= CLOSE_BATCH
                await self._publish()
                g = cp.merge.global_watermark
                closed = cp.merge.frontier
                if (g, closed) != self._told:
                    self._told = (g, closed)
                    self.state.advance_global(g)
                    self.state.merge_closed = closed
                    await self.producer.send(
                        self.opts.internal.progress,
                        orjson.dumps({"watermark": g, "closed_through": closed}), partition=0)
            if time.monotonic() - self.last_snapshot >= self.opts.checkpoint_every_s:
                await self.snapshot()
            return n

    async def _publish(self) -> None:
        """Dead letters, stats, alerts: numbered in that order, sent in batches per output
        partition (one `send` per record cost more than the window close itself)."""
        out = self.outputs
        topics = self.opts.topics
        cp = self.cp
        groups: dict[tuple[str, int], list] = {}

        def add(topic: str, key: bytes | None, value: bytes) -> None:
            cp.out_seq += 1
            part = _partition_for(key, self.out_partitions.get(topic, 1))
            if cp.out_seq <= self.published.get((topic, part), 0):
                return                                   # out before the restart
            groups.setdefault((topic, part), []).append(
                (key, value, [(SEQ_HEADER, b"%d" % cp.out_seq)]))

        for letter in out.dead_letters:
            add(topics.deadletter, letter.key, letter.to_json())
        stats = 0
        for values, voff, keys, koff in out.stats_text:
            for i in range(len(voff) - 1):          # each value is followed by a newline
                add(topics.stats, keys[koff[i]:koff[i + 1]], values[voff[i]:voff[i + 1] - 1])
            stats += len(voff) - 1
        for rec in out.alert_records:
            add(topics.alerts, str(rec.get("fingerprint", "")).encode(), orjson.dumps(rec))
            if self.opts.on_alert is not None:
                self.opts.on_alert(rec)
        futures = []
        producer = self.producer
        for (topic, part), items in groups.items():
            batch = producer.create_batch()
            for key, value, headers in items:
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    futures.append(await producer.send_batch(batch, topic, partition=part))
                    batch = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None,
                                    headers=headers) is None:
                        raise ValueError(f"an output record of {len(value)} bytes does not "
                                         f"fit in a batch for {topic}")
            if batch.record_count():
                futures.append(await producer.send_batch(batch, topic, partition=part))
        self.state.dead_letters += len(out.dead_letters)
        self.state.stats += stats
        self.state.alerts += len(out.alert_records)
        out.dead_letters.clear()
        out.stats_text.clear()
        out.alert_records.clear()
        # the previous step's batches, acknowledged while this step ran, as a rule: waiting
        # for this step's own would idle the merge for a round trip each step
        await self._settle()
        self._in_flight = futures


# -- the worker's live state -----------------------------------------------------------------
class MergeFacts(NamedTuple):
    """What the merge process tells the worker, a few times a second."""

    active: bool                     # it holds callstream.partials (the merge runs here)
    closed_through: int | None
    summary: dict | None
    stats: int                       # records published by this worker's merge
    alerts: int
    dead_letters: int
    global_watermark: int | None


class LiveState:
    """What /health and the dashboard read; the global watermark hint for idle partitions."""

    def __init__(self) -> None:
        self.events = 0
        self.stats = 0
        self.alerts = 0
        self.dead_letters = 0
        self.global_watermark: int | None = None
        self.global_since = 0.0                      # wall time (monotonic) it last rose
        self.merge: PartitionMerge | None = None     # in the merge's own process
        self.merge_facts: MergeFacts | None = None   # in the worker, from that process
        #: where the merge (on any worker) has closed buckets through, from its progress
        self.merge_closed: int | None = None
        self.partitions: list[int] = []          # input partitions joined here
        self._summary: tuple[float, dict] | None = None     # (when, the merge's summary)

    def facts(self, fresh: bool = False) -> MergeFacts:
        """What the merge's process tells the worker; its summary (sketch centiles: the
        dear part) is redone at most every `SUMMARY_EVERY_S` unless `fresh`."""
        m = self.merge
        summary = None
        if m is not None:
            now = time.monotonic()
            if fresh or self._summary is None or now - self._summary[0] >= SUMMARY_EVERY_S:
                self._summary = (now, m.summary())
            summary = self._summary[1]
        return MergeFacts(m is not None, m.frontier if m is not None else None, summary,
                          self.stats, self.alerts, self.dead_letters, self.global_watermark)

    def learn(self, facts: MergeFacts) -> None:
        self.merge_facts = facts
        self.stats, self.alerts, self.dead_letters = facts.stats, facts.alerts, facts.dead_letters
        self.advance_global(facts.global_watermark)
        if facts.active and facts.closed_through is not None:
            self.merge_closed = facts.closed_through

    def advance_global(self, g: int | None) -> None:
        if g is not None and (self.global_watermark is None or g > self.global_watermark):
            self.global_watermark = g
            self.global_since = time.monotonic()

    @property
    def closed_through(self) -> int | None:
        f = self.merge_facts
        return f.closed_through if f is not None and f.active else None

    def health(self) -> dict:
        f = self.merge_facts
        active = f is not None and f.active
        out = {"events": self.events, "stats": self.stats, "alerts": self.alerts,
               "dead_letters": self.dead_letters, "partitions": self.partitions,
               "global_watermark": self.global_watermark, "merge": active}
        if active:
            out["closed_through"] = f.closed_through
            out["summary"] = f.summary
        return out


def _collect_rarely() -> None:
    """The joins and the merge hold hundreds of thousands of long-lived objects (buffered
    events, open episodes, window panes) and their hot paths make no reference cycles, yet at
    the default thresholds the collector rescanned them all every few thousand allocations:
    a third of the worker's CPU time. What exists at startup is frozen out of the scans;
    young cycles (asyncio's, aiokafka's) are still collected."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


# -- the merge's process ---------------------------------------------------------------------
_STOP = "stop"
FACTS_EVERY_S = 0.2
SUMMARY_EVERY_S = 1.0


def merge_process_main(opts: LiveOptions, rules, conn, loglevel: int) -> None:
    """Entry point of the merge's process (spawned by `MergeProcess`). Signals are the
    worker's to handle: it tells this process to stop (snapshot, leave the group) or dies."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent()
    logging.basicConfig(level=loglevel, format="[%(asctime)s] [%(process)d] [%(levelname)s] "
                                               "%(message)s")
    logging.getLogger("aiokafka").setLevel(max(loglevel, logging.WARNING))
    _collect_rarely()
    try:
        asyncio.run(_run_merge(opts, rules, conn))
    except KeyboardInterrupt:
        pass
    except Exception:
        log.exception("merge process failed")
        raise SystemExit(1)


async def _run_merge(opts: LiveOptions, rules, conn) -> None:
    import copy
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_message() -> None:
        try:
            conn.recv()                  # the worker says stop
        except (EOFError, OSError):
            pass                         # the worker is gone
        loop.remove_reader(conn.fileno())
        stop.set()

    alerts: list[dict] = []
    opts = LiveOptions(**{**opts.__dict__, "rules_factory": lambda: copy.deepcopy(rules),
                          "on_alert": alerts.append})
    loop.add_reader(conn.fileno(), on_message)
    state = LiveState()
    producer = _producer(opts.bootstrap)
    await producer.start()
    stage = MergeStage(opts, producer, state)
    told = None
    last = 0.0
    try:
        await stage.start()
        while not stop.is_set():
            await stage.run_once()
            now = time.monotonic()
            if alerts or now - last >= FACTS_EVERY_S:
                facts = state.facts()
                if alerts or facts != told:
                    conn.send((facts, alerts[:]))
                    alerts.clear()
                    told = facts
                last = now
    finally:
        await stage.stop()
        await producer.stop()
        try:
            conn.send((state.facts(fresh=True), alerts[:]))
        except OSError:
            pass


class MergeProcess:
    """The worker's side of the merge: a child process, so the merge (window closes, rules,
    publishing) runs on another core beside the joins instead of taking turns with them on
    one event loop. The child is the same `MergeStage`; it reports its facts and alerts back
    over a pipe for /health, the dashboard and the alert webhooks."""

    def __init__(self, opts: LiveOptions, state: LiveState, loglevel: int) -> None:
        self.opts = opts
        self.state = state
        self.loglevel = loglevel
        self.proc = None
        self.conn = None
        self.gone = asyncio.Event()

    def spawn(self) -> None:
        """Start the child (no event loop needed): the worker does this before Faust starts,
        so the child's imports and connections overlap Faust's own start-up (seconds)."""
        if self.proc is not None:
            return
        import multiprocessing
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe()
        child_opts = LiveOptions(**{**self.opts.__dict__, "rules_factory": None,
                                    "on_alert": None})
        proc = ctx.Process(target=merge_process_main, name="callstream-merge",
                           args=(child_opts, self.opts.rules_factory(), theirs, self.loglevel),
                           daemon=True)
        proc.start()
        self.proc = proc
        theirs.close()
        self.conn = ours

    async def start(self) -> None:
        self.spawn()
        asyncio.get_running_loop().add_reader(self.conn.fileno(), self._on_message)

    def _on_message(self) -> None:
        try:
            facts, alerts = self.conn.recv()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(self.conn.fileno())
            self.gone.set()
            return
        self.state.learn(facts)
        if self.opts.on_alert is not None:
            for rec in alerts:
                self.opts.on_alert(rec)

    async def watch(self, stopping: asyncio.Event) -> None:
        """Returns when the worker stops; a merge process that dies on its own is a failure
        of the worker (nothing else would merge this worker's share)."""
        waiters = [asyncio.ensure_future(self.gone.wait()),
                   asyncio.ensure_future(stopping.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        if self.gone.is_set() and not stopping.is_set():
            raise RuntimeError(f"the merge process exited (code {self.proc.exitcode})")

    async def stop(self) -> None:
        """Ask the child to snapshot and leave its group; wait for it."""
        if self.proc is None:
            return
        try:
            self.conn.send(_STOP)
        except OSError:
            pass
        await asyncio.get_running_loop().run_in_executor(None, self.proc.join, 30)
        if self.proc.is_alive():
            log.warning("merge process did not stop within 30 s; killed")
            self.proc.kill()
            self.proc.join(5)
        while not self.gone.is_set() and self.conn.poll():
            self._on_message()          # its last facts


class LiveProcessor:
    """Both stages and the progress reader, run as one task of the Faust app."""

    def __init__(self, opts: LiveOptions) -> None:
        self.opts = opts
        self.state = LiveState()
        # made here, before the event loop runs: on a fresh install its Numba kernel is
        # compiled now (seconds of CPU), which inside the loop stalled every client's
        # requests past their timeouts
        self.decoder = RecordDecoder(opts.settings.max_record_bytes)
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._merge: MergeProcess | None = None

    def spawn_merge(self, loglevel: int) -> None:
        """Start the merge's process now, ahead of `run` (see `MergeProcess.spawn`)."""
        self._merge = MergeProcess(self.opts, self.state, loglevel)
        self._merge.spawn()

    @property
    def watermark(self) -> int | None:
        closed = self.state.closed_through
        return closed if closed is not None else self.state.global_watermark

    async def run(self) -> None:
        opts = self.opts
        _collect_rarely()
        producer = _producer(opts.bootstrap)
        await producer.start()
        join = JoinStage(opts, producer, self.state, self.decoder)
        merge = self._merge or MergeProcess(opts, self.state,
                                            logging.getLogger().getEffectiveLevel())
        try:
            await merge.start()
            await join.start()
            log.info("live processor started: group %s, %d partitions", opts.group,
                     opts.partitions)
            await asyncio.gather(self._loop(join.run_once), self._guard(merge.watch),
                                 self._progress())
        finally:
            try:
                await join.stop()
                await merge.stop()
                await producer.stop()
            finally:
                self._stopped.set()

    async def _loop(self, step) -> None:
        async def steps(stopping: asyncio.Event) -> None:
            while not stopping.is_set():
                await step()
        await self._guard(steps)

    async def _guard(self, task) -> None:
        try:
            await task(self._stopping)
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
                    progress = orjson.loads(m.value)
                    self.state.advance_global(progress.get("watermark"))
                    closed = progress.get("closed_through")
                    if closed is not None:
                        self.state.merge_closed = closed
        finally:
            await c.stop()

    async def stop(self) -> None:
        """Snapshot everything and leave the groups (a clean SIGTERM)."""
        self._stopping.set()
        try:
            await asyncio.wait_for(self._stopped.wait(), 30)
        except asyncio.TimeoutError:
            log.warning("live processor did not stop within 30 s")
