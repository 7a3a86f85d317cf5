"""The first level of the live scale-out: one input partition's reorder buffer and call join.

The three input topics are co-partitioned by `call_id`, so every event of a call reaches the
same partition and the per-call join needs nothing from other partitions. `PartitionJoin`
buffers its partition's events per bucket, releases them in the Processor's total order once
the watermark it is given passes, and instead of windows it records what the join decided
per released bucket (`BucketOutcome`): calls, hear-and-treat, redirects, responses, and the
calls waiting for a crew. The aggregator (`streams.aggregate.PartitionMerge`) adds up those
outcomes from every partition (as `OutcomeColumns`, the columnar join's form), a run of
buckets at a time, into one `WindowTotals`.

Pure and deterministic: given the same snapshot, the same events in the same chunks and the
same watermarks, it produces the same outcomes and the same state; the live worker relies on
that to recover a partition after a crash without counting anything twice. The worker runs
the same join in Numba kernels (`streams.fast.partjoin.ColumnarPartitionJoin`); this one is
its reference (tests/test_partjoin.py), and snapshots taken before that carry on with it."""

from __future__ import annotations

from typing import NamedTuple

from streams.episodes import EpisodeJoin
from streams.events import DeadLetter, Event
from streams.processor import _ORDER, buffer_event
from streams.settings import ProcessingSettings
from streams.outcomes import BucketOutcome, OutcomeColumns, Waiting
from streams.windows import CALLS, HEAR_AND_TREAT, REDIRECTED, REDIRECTED_C1

class PartitionJoin:
    """Reorder buffer + `EpisodeJoin` for one co-partition of the input topics."""

    def __init__(self, partition: int, settings: ProcessingSettings, sources: int = 3,
                 position_kind: str = "offset") -> None:
        self.partition = partition
        self.bucket_ms = settings.bucket_ms
        self.lateness_ms = settings.allowed_lateness_ms
        self.join = EpisodeJoin(self, clock=settings.clock, arp_cap_ms=settings.arp_cap_ms,
                                horizon_ms=settings.episode_horizon_ms,
                                position_kind=position_kind)
        self.slots: dict[int, list[Event]] = {}
        #: highest event time per source (input topic) of this partition
        self.source_max: list[int | None] = [None] * sources
        self.frontier: int | None = None           # every bucket before this is released
        self.first_frontier: int | None = None
        self._min_ts: int | None = None            # earliest event before the first release
        self.events = 0
        self.late_events = 0
        self._calls: list[tuple[str, int, int]] = []
        self._responses: list[tuple[str, str, int, int]] = []
        self.dead_letters: list[DeadLetter] = []   # to ship with the next report
        self._waiting_sent: Waiting = {}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        join = self.join
        if getattr(join, "waiting_touched", None) is None:
            # a snapshot from before the join tracked its changed keys: compare them all
            join.waiting_touched = set(join.waiting) | set(self._waiting_sent)

    # -- input -------------------------------------------------------------------------
    def feed(self, ev: Event, source: int) -> None:
        self.events += 1
        ts = ev.ts
        m = self.source_max[source]
        if m is None or ts > m:
            self.source_max[source] = ts
        frontier = self.frontier
        if frontier is None:
            # nothing released yet: the first release starts from the earliest event, so
            # reading one topic ahead of the others makes nothing late
            if self._min_ts is None or ts < self._min_ts:
                self._min_ts = ts
        elif ts < frontier:
            self.late_events += 1
            self.join.process(ev)
            return
        buffer_event(self.slots, ev, self.bucket_ms)

    def reject(self, letter: DeadLetter) -> None:
        self.events += 1
        self.dead_letters.append(letter)

    def own_watermark(self, idle: list[bool] | None = None) -> int | None:
        """Minimum over this partition's sources of (highest event time - allowed lateness),
        leaving out the sources marked idle; None while a live source has no event yet, or
        when every source is idle (the caller then uses the global watermark)."""
        low = None
        for i, m in enumerate(self.source_max):
            if idle is not None and idle[i]:
                continue
            if m is None:
                return None
            if low is None or m < low:
                low = m
        return None if low is None else low - self.lateness_ms

    @property
    def next_slot(self) -> int | None:
        return min(self.slots) if self.slots else None

    # -- release -------------------------------------------------------------------------
    def release(self, watermark: int | None) -> list[BucketOutcome]:
        """Release every bucket whose end `watermark` has passed, in event-time order; one
        outcome per bucket that changed anything the aggregator keeps."""
        out: list[BucketOutcome] = []
        if watermark is None:
            return out
        if self.frontier is None:
            if self._min_ts is None:
                # no event yet: nothing to release, but what it has now declared released
                # stays released (a later event before it is late, as it would be offline)
                self.frontier = watermark - watermark % self.bucket_ms
                return out
            first = self._min_ts - self.lateness_ms
            self.frontier = self.first_frontier = first - first % self.bucket_ms
        bucket = self.bucket_ms
        join = self.join
        while self.frontier + bucket <= watermark:
            start = self.frontier
            end = start + bucket
            slot = self.slots.pop(start, None)
            if slot is not None:
                slot.sort(key=_ORDER)
                process = join.process
                for ev in slot:
                    process(ev)
            elif not self.slots and not join.open and not join._decided_order \
                    and not self._calls and not self._responses:
                # nothing buffered, nothing open, nothing to forget: skip to the watermark
                self.frontier = watermark - watermark % bucket
                continue
            join.expire(end)
            delta = self._waiting_delta() if join.waiting_touched else None
            if slot is not None or delta or self._calls or self._responses:
                out.append(BucketOutcome(end, slot is not None, self._calls, self._responses,
                                         delta or None, True))
                self._calls, self._responses = [], []
            self.frontier = end
        return out

    def _waiting_delta(self) -> Waiting:
        """The waiting keys the join touched since the last bucket whose (calls waiting,
        earliest start) differ from what was sent, None for a key gone; applied to what
        was sent. In key order, so a redone chunk gives the same report."""
        join = self.join
        sent = self._waiting_sent
        delta: Waiting = {}
        for key in sorted(join.waiting_touched):
            now = join.waiting_at(key)
            if sent.get(key) != now:
                delta[key] = now
                if now is None:
                    del sent[key]
                else:
                    sent[key] = now
        join.waiting_touched.clear()
        return delta

    def counters(self) -> dict:
        c = self.join.counters
        return {"events": self.events, "late_events": self.late_events,
                "duplicates": c["duplicates"], "after_final": c["after_final"],
                "c1_without_transport": c["c1_without_transport"],
                "incomplete": dict(self.join.incomplete)}

    # -- OutcomeSink (called by the join) ----------------------------------------------
    def on_call(self, trust: str, ts: int) -> None:
        self._calls.append((trust, ts, CALLS))

    def on_hear_and_treat(self, trust: str, ts: int) -> None:
        self._calls.append((trust, ts, HEAR_AND_TREAT))

    def on_redirected(self, trust: str, ts: int, category: str | None) -> None:
        self._calls.append((trust, ts, REDIRECTED if category != "C1" else REDIRECTED_C1))

    def on_response(self, trust: str, category: str, stop_ts: int, ms: int) -> None:
        self._responses.append((trust, category, stop_ts, ms))

    def on_incomplete(self, reason: str, trust: str | None) -> None:
        pass  # counted by the join

    def on_dead_letter(self, letter: DeadLetter) -> None:
        self.dead_letters.append(letter)


class PartitionReport(NamedTuple):
    """One processed chunk of a partition, as shipped to the aggregator.

    `seq` numbers a partition's reports from 1; the aggregator applies each once, in order.
    `offsets` (next offset per source after the chunk) and `watermark` (the one the chunk was
    released with) let a restarted worker redo the chunk exactly."""

    partition: int
    seq: int
    offsets: tuple[int, ...]
    watermark: int | None
    released_through: int | None
    first_frontier: int | None
    next_slot: int | None
    source_max: tuple[int | None, ...]
    buckets: list[BucketOutcome] | OutcomeColumns
    dead_letters: list[DeadLetter]
    counters: dict


def make_report(pj: PartitionJoin, seq: int, offsets: tuple[int, ...], watermark: int | None,
                buckets: list[BucketOutcome] | OutcomeColumns) -> PartitionReport:
    letters, pj.dead_letters = pj.dead_letters, []
    return PartitionReport(pj.partition, seq, tuple(offsets), watermark, pj.frontier,
                           pj.first_frontier, pj.next_slot, tuple(pj.source_max), buckets,
                           letters, pj.counters())
