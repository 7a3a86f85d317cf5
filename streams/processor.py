"""The processing core: reorder buffer + watermark, episode join, windows, summary, rules.

One object, fed validated events and rejections, drives everything in event time; the
offline replay and the live Faust worker both wrap it. The watermark is the highest event
time seen minus the allowed lateness; buckets are released in event-time order (sorted by
time, type, call id, raw bytes) once the watermark passes their end, so any arrival order
within the lateness gives the same outputs byte for byte. Events behind the released
frontier are late: processed at once, counted, never dropped."""

from __future__ import annotations

from operator import itemgetter
from typing import Callable, Iterable, Protocol

import numpy as np

from streams.episodes import EpisodeJoin
from streams.events import DeadLetter, Event
from streams.settings import ProcessingSettings
from streams.sketch import QuantileSketch
from streams.windows import (CALLS, CATEGORY_KEYS, HEAR_AND_TREAT, QUANTILES, REDIRECTED,
                             REDIRECTED_C1, WindowStore)

_ORDER = itemgetter(0, 1, 2, 10)   # ts, type, call_id, raw: a total, arrival-free order
_IDLE_JUMP_MS = 33 * 24 * 3_600_000  # past this much empty event time nothing is retained


class Outputs(Protocol):
    """Where results go: files for the offline replay, Kafka topics for the worker."""

    def stats(self, record: dict) -> None: ...
    def alert(self, record: dict) -> None: ...
    def dead_letter(self, letter: DeadLetter) -> None: ...


class CollectingOutputs:
    """Outputs kept in lists: the worker drains them after each batch; tests read them."""

    def __init__(self) -> None:
        self.stats_records: list[dict] = []
        self.alert_records: list[dict] = []
        self.dead_letters: list[DeadLetter] = []

    def stats(self, record: dict) -> None:
        self.stats_records.append(record)

    def alert(self, record: dict) -> None:
        self.alert_records.append(record)

    def dead_letter(self, letter: DeadLetter) -> None:
        self.dead_letters.append(letter)


class Rules(Protocol):
    """Alert evaluation hook (streams.rules); called at every closed bucket.

    `records` are the window records closed at `end`; `pressure()` gives (trust, category) ->
    (calls waiting, longest wait ms) at `end`; `last_call` maps trust -> event time of its latest
    processed call (the data-gap rule reads it)."""

    def evaluate(self, end: int, records: list[dict], pressure: Callable[[], dict],
                 last_call: dict[str, int], emit: Callable[[dict], None]) -> None: ...


class CategoryTotals:
    """Exact count/sum/max (integer ms) plus a sketch for the summary centiles."""

    __slots__ = ("count", "sum_ms", "max_ms", "pending", "sketch")

    def __init__(self, accuracy: float) -> None:
        self.count = 0
        self.sum_ms = 0
        self.max_ms = 0
        self.pending: list[int] = []
        self.sketch = QuantileSketch(accuracy)

    def flush(self) -> None:
        if self.pending:
            self.sketch.add_many(np.array(self.pending, dtype=np.float64) / 1000.0)
            self.pending = []

    def to_dict(self) -> dict:
        self.flush()
        if not self.count:
            return {"count": 0, "mean_s": None, "p50_s": None, "p90_s": None, "p99_s": None,
                    "max_s": None}
        p50, p90, p99 = self.sketch.quantiles(QUANTILES)
        return {"count": self.count, "mean_s": round(self.sum_ms / self.count / 1000.0, 3),
                "p50_s": round(float(p50), 3), "p90_s": round(float(p90), 3),
                "p99_s": round(float(p99), 3), "max_s": self.max_ms / 1000.0}


class Processor:
    """Event-time processing of one stream of events (all trusts)."""

    def __init__(self, settings: ProcessingSettings, outputs: Outputs,
                 rules: Rules | None = None, position_kind: str = "line") -> None:
        self.settings = settings
        self.outputs = outputs
        self.rules = rules
        self.bucket_ms = settings.bucket_ms
        self.lateness_ms = settings.allowed_lateness_ms
        self.windows = WindowStore(settings)
        self.join = EpisodeJoin(self, clock=settings.clock, arp_cap_ms=settings.arp_cap_ms,
                                horizon_ms=settings.episode_horizon_ms,
                                position_kind=position_kind)
        self.slots: dict[int, list[Event]] = {}
        self.max_ts: int | None = None
        self.frontier: int | None = None       # every bucket before this is released
        #: set by the live worker, whose watermark is the minimum over input partitions
        self.external_watermark: int | None = None
        self.last_activity: int | None = None
        self.events = 0
        self.late_events = 0
        self.dead_letters: dict[str, int] = {}
        self.calls = 0
        self.hear_and_treat = 0
        self.redirected = 0
        self.categories = {c: CategoryTotals(settings.relative_accuracy) for c in CATEGORY_KEYS}
        self.last_call: dict[str, int] = {}
        self.stats_records = 0
        self.alert_records = 0
        self.finished = False

    # -- input -------------------------------------------------------------------------
    def feed(self, ev: Event) -> None:
        """Take one validated event (any order). Buckets are released as soon as the
        watermark passes them, so results never depend on how input was batched."""
        self.events += 1
        ts = ev.ts
        frontier = self.frontier
        if frontier is None:
            first = ts - self.lateness_ms
            frontier = self.frontier = first - first % self.bucket_ms
        if ts < frontier:
            self.late_events += 1
            self.join.process(ev)
            return
        start = ts - ts % self.bucket_ms
        slot = self.slots.get(start)
        if slot is None:
            self.slots[start] = [ev]
        else:
            slot.append(ev)
        if self.max_ts is None or ts > self.max_ts:
            self.max_ts = ts
            if self.external_watermark is None and ts - self.lateness_ms >= frontier + self.bucket_ms:
                self.advance()

    def feed_many(self, events: Iterable[Event]) -> None:
        for ev in events:
            self.feed(ev)
        self.advance()

    def reject(self, letter: DeadLetter) -> None:
        """A record that failed decoding: counted as an event and a dead letter."""
        self.events += 1
        self.on_dead_letter(letter)

    @property
    def watermark(self) -> int | None:
        if self.external_watermark is not None:
            return self.external_watermark
        return None if self.max_ts is None else self.max_ts - self.lateness_ms

    def advance(self, watermark: int | None = None) -> None:
        """Release every bucket whose end the watermark has passed, in event-time order.

        The live worker passes its own watermark (the minimum over input partitions)."""
        wm = self.watermark if watermark is None else watermark
        if wm is None or self.frontier is None:
            return
        bucket = self.bucket_ms
        while self.frontier + bucket <= wm:
            start = self.frontier
            slot = self.slots.pop(start, None)
            if slot is not None:
                self.last_activity = start
                slot.sort(key=_ORDER)
                process = self.join.process
                for ev in slot:
                    process(ev)
            self._boundary(start + bucket)
            self.frontier = start + bucket
            if slot is None and self.last_activity is not None \
                    and self.frontier - self.last_activity > _IDLE_JUMP_MS:
                upcoming = min(self.slots) if self.slots else wm - wm % bucket
                if upcoming > self.frontier:
                    self.frontier = upcoming  # nothing retained: skip the empty stretch

    def finish(self) -> dict:
        """End of input: release everything, close all windows that hold data, report."""
        if self.finished:
            return self.summary()
        if self.slots:
            last = max(self.slots) + self.bucket_ms
            self.advance(watermark=last)
        if self.frontier is not None:
            # close the windows still holding data: up to the longest window after the last event
            longest = max([w.size_ms for w in self.settings.windows] + [self.bucket_ms])
            final = self.frontier + longest
            if self.settings.calendar:
                final = max(final, self.frontier + 25 * 3_600_000)
            final -= final % self.bucket_ms
            self._drain_until(final)
        self.join.finish()
        self.finished = True
        return self.summary()

    def _drain_until(self, end: int) -> None:
        """After the last event: close buckets up to `end`, stopping once nothing is left.

        Rules are not evaluated here: time after the end of input is not a silent stream,
        so it must raise no data gaps, no growing waits and no verdicts on emptying windows."""
        while self.frontier < end:
            self._boundary(self.frontier + self.bucket_ms, rules=False)
            self.frontier += self.bucket_ms

    # -- event-time boundary -----------------------------------------------------------
    def _boundary(self, end: int, rules: bool = True) -> None:
        self.join.expire(end)
        pressure_cache: list = []

        def pressure() -> dict:
            if not pressure_cache:
                pressure_cache.append(self.join.pressure(end))
            return pressure_cache[0]

        records = self.windows.close(end, pressure)
        stats = self.outputs.stats
        for rec in records:
            stats(rec)
        self.stats_records += len(records)
        if rules and self.rules is not None:
            self.rules.evaluate(end, records, pressure, self.last_call, self._emit_alert)

    def _emit_alert(self, record: dict) -> None:
        self.alert_records += 1
        self.outputs.alert(record)

    # -- OutcomeSink (called by the join) ----------------------------------------------
    def on_call(self, trust: str, ts: int) -> None:
        self.calls += 1
        if ts > self.last_call.get(trust, -1):
            self.last_call[trust] = ts
        self.windows.add_total(trust, ts, CALLS)

    def on_hear_and_treat(self, trust: str, ts: int) -> None:
        self.hear_and_treat += 1
        self.windows.add_total(trust, ts, HEAR_AND_TREAT)

    def on_redirected(self, trust: str, ts: int, category: str | None) -> None:
        self.redirected += 1
        self.windows.add_total(trust, ts, REDIRECTED)
        if category == "C1":
            self.windows.add_total(trust, ts, REDIRECTED_C1)

    def on_response(self, trust: str, category: str, stop_ts: int, ms: int) -> None:
        tot = self.categories[category]
        tot.count += 1
        tot.sum_ms += ms
        if ms > tot.max_ms:
            tot.max_ms = ms
        tot.pending.append(ms)
        if len(tot.pending) >= 65536:
            tot.flush()
        self.windows.add_response(trust, category, stop_ts, ms)

    def on_incomplete(self, reason: str, trust: str | None) -> None:
        pass  # counted by the join; reported in the summary

    def on_dead_letter(self, letter: DeadLetter) -> None:
        self.dead_letters[letter.reason] = self.dead_letters.get(letter.reason, 0) + 1
        self.outputs.dead_letter(letter)

    # -- report ------------------------------------------------------------------------
    def summary(self) -> dict:
        """Totals over everything processed (CONTRACT §3 summary.json, plus diagnostics)."""
        return {
            "events": self.events,
            "dead_letters": sum(self.dead_letters.values()),
            "calls": self.calls,
            "hear_and_treat": self.hear_and_treat,
            "redirected": self.redirected,
            "categories": {c: t.to_dict() for c, t in self.categories.items()},
            "dead_letter_reasons": dict(sorted(self.dead_letters.items())),
            "incomplete": dict(sorted(self.join.incomplete.items())),
            "duplicates": self.join.counters["duplicates"],
            "after_final": self.join.counters["after_final"],
            "c1_without_transport": self.join.counters["c1_without_transport"],
            "late_events": self.late_events,
            "late_responses": self.windows.late_responses,
            "too_late": self.windows.too_late,
            "stats_records": self.stats_records,
            "alerts": self.alert_records,
            "clock": self.settings.clock,
        }
