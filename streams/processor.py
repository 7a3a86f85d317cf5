"""The processing core: reorder buffer + watermark, episode join, windows, summary, rules.

One object, fed validated events and rejections, drives everything in event time: the
offline replay's reference engine. The live worker runs the same two halves apart: the join
per input partition (`streams.partition`) and `WindowTotals` in its merge
(`streams.aggregate`), and gives the same records. The watermark is the highest event
time seen minus the allowed lateness; buckets are released in event-time order (sorted by
time, type, call id, raw bytes) once the watermark passes their end, so any arrival order
within the lateness gives the same outputs byte for byte. Events behind the released
frontier are late: processed at once, counted, never dropped."""

from __future__ import annotations

from operator import itemgetter
from typing import Iterable

from streams.aggregate import CategoryTotals, CollectingOutputs, Outputs, Rules, WindowTotals
from streams.episodes import EpisodeJoin
from streams.events import DeadLetter, Event
from streams.settings import ProcessingSettings

__all__ = ["Processor", "CategoryTotals", "CollectingOutputs", "Outputs", "Rules"]

_ORDER = itemgetter(0, 1, 2, 10)   # ts, type, call_id, raw: a total, arrival-free order
_IDLE_JUMP_MS = 33 * 24 * 3_600_000  # past this much empty event time nothing is retained


def buffer_event(slots: dict[int, list[Event]], ev: Event, bucket_ms: int) -> None:
    """The reorder buffer: an event waits in its bucket until the watermark releases it."""
    start = ev.ts - ev.ts % bucket_ms
    slot = slots.get(start)
    if slot is None:
        slots[start] = [ev]
    else:
        slot.append(ev)


class Processor:
    """Event-time processing of one stream of events (all trusts)."""

    def __init__(self, settings: ProcessingSettings, outputs: Outputs,
                 rules: Rules | None = None, position_kind: str = "line") -> None:
        self.settings = settings
        self.outputs = outputs
        self.rules = rules
        self.bucket_ms = settings.bucket_ms
        self.lateness_ms = settings.allowed_lateness_ms
        self.totals = WindowTotals(settings, outputs, rules)
        self.windows = self.totals.windows
        self.join = EpisodeJoin(self.totals, clock=settings.clock, arp_cap_ms=settings.arp_cap_ms,
                                horizon_ms=settings.episode_horizon_ms,
                                position_kind=position_kind)
        self.slots: dict[int, list[Event]] = {}
        self.max_ts: int | None = None
        self.frontier: int | None = None       # every bucket before this is released
        self.last_activity: int | None = None
        self.events = 0
        self.late_events = 0
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
        buffer_event(self.slots, ev, self.bucket_ms)
        if self.max_ts is None or ts > self.max_ts:
            self.max_ts = ts
            if ts - self.lateness_ms >= frontier + self.bucket_ms:
                self.advance()

    def feed_many(self, events: Iterable[Event]) -> None:
        for ev in events:
            self.feed(ev)
        self.advance()

    def reject(self, letter: DeadLetter) -> None:
        """A record that failed decoding: counted as an event and a dead letter."""
        self.events += 1
        self.totals.on_dead_letter(letter)

    @property
    def watermark(self) -> int | None:
        return None if self.max_ts is None else self.max_ts - self.lateness_ms

    def advance(self, watermark: int | None = None) -> None:
        """Release every bucket whose end the watermark has passed, in event-time order.

        `finish` passes the end of input."""
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

        self.totals.close(end, pressure, rules)

    # -- report ------------------------------------------------------------------------
    def summary(self) -> dict:
        """Totals over everything processed (CONTRACT §3 summary.json, plus diagnostics)."""
        t = self.totals
        return {
            "events": self.events,
            **t.summary(),
            "incomplete": dict(sorted(self.join.incomplete.items())),
            "duplicates": self.join.counters["duplicates"],
            "after_final": self.join.counters["after_final"],
            "c1_without_transport": self.join.counters["c1_without_transport"],
            "late_events": self.late_events,
            "late_responses": self.windows.late_responses,
            "too_late": self.windows.too_late,
            "stats_records": t.stats_records,
            "alerts": t.alert_records,
            "clock": self.settings.clock,
        }
