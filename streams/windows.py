"""Event-time windows: aligned buckets per (trust, category), merged into rolling and calendar
windows and emitted once when the watermark passes their end (CONTRACT §3-4).

Storage is values, not sketches: each bucket keeps the response times (integer ms) that
stopped in it, so count, sum and max are exact and every sketch is built from exactly the same
multiset whatever the arrival order. Panes (one per window `every`) are concatenations of
their buckets, built once when they close; a window is a concatenation of its panes, then one
sketch `add_many` call. Late responses (their bucket already closed) are added to every pane
and day that already holds their bucket, counted as `late`, and never lost."""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from streams.settings import HOUR_MS, ProcessingSettings, RollingWindow
from streams.sketch import segment_quantiles
from streams.timefmt import format_ts, local_date, local_day_start, local_month_start

#: Category keys of window records, in output order (C1T is a reporting split of C1).
CATEGORY_KEYS = ("C1", "C1T", "C2", "C3", "C4")
ALL = "ALL"
ALL_TRUSTS = "*"
QUANTILES = (0.5, 0.9, 0.99)
_CALENDAR_PANE_MS = 15 * 60_000   # every real time-zone offset is a multiple of 15 min

# per-trust call totals: calls, hear_and_treat, redirected, redirected_c1
CALLS, HEAR_AND_TREAT, REDIRECTED, REDIRECTED_C1 = range(4)
_TOTAL_NAMES = ("calls", "hear_and_treat", "redirected", "redirected_c1")


class Pane:
    """Responses and call totals of one aligned span (a bucket, a pane or a calendar day)."""

    __slots__ = ("values", "late", "totals")

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], list[int] | np.ndarray] = {}
        self.late: dict[tuple[str, str], int] = {}
        self.totals: dict[str, list[int]] = {}

    def add_total(self, trust: str, which: int) -> None:
        t = self.totals.get(trust)
        if t is None:
            t = self.totals[trust] = [0, 0, 0, 0]
        t[which] += 1

    def add_late(self, key: tuple[str, str], ms: int) -> None:
        old = self.values.get(key)
        if old is None:
            self.values[key] = np.array([ms], dtype=np.int64)
        else:
            self.values[key] = np.append(old, np.int64(ms))
        self.late[key] = self.late.get(key, 0) + 1


def _merge(panes: list[Pane]) -> Pane:
    """Concatenate panes into one (values as int64 arrays)."""
    out = Pane()
    collected: dict[tuple[str, str], list] = {}
    for p in panes:
        for key, vals in p.values.items():
            lst = collected.get(key)
            if lst is None:
                collected[key] = [vals]
            else:
                lst.append(vals)
        for key, n in p.late.items():
            out.late[key] = out.late.get(key, 0) + n
        for trust, t in p.totals.items():
            o = out.totals.get(trust)
            if o is None:
                out.totals[trust] = list(t)
            else:
                o[0] += t[0]; o[1] += t[1]; o[2] += t[2]; o[3] += t[3]
    for key, parts in collected.items():
        if len(parts) == 1:
            v = parts[0]
            out.values[key] = v if isinstance(v, np.ndarray) else np.array(v, dtype=np.int64)
        else:
            out.values[key] = np.concatenate(
                [p if isinstance(p, np.ndarray) else np.array(p, dtype=np.int64) for p in parts])
    return out


class WindowStore:
    """Buckets, panes and calendar days for every (trust, category); emits window records."""

    def __init__(self, settings: ProcessingSettings) -> None:
        self.settings = settings
        self.bucket_ms = settings.bucket_ms
        self.windows: tuple[RollingWindow, ...] = settings.windows
        self.calendar = settings.calendar
        self.tz = settings.tz
        self.accuracy = settings.relative_accuracy
        self.pane_sizes = sorted({w.every_ms for w in self.windows if w.every_ms != self.bucket_ms}
                                 | ({_CALENDAR_PANE_MS} if self.calendar else set()))
        self.buckets: dict[int, Pane] = {}
        self.panes: dict[int, dict[int, Pane]] = {size: {} for size in self.pane_sizes}
        self.days: dict[int, Pane] = {}          # local day start -> day pane (for mtd)
        self.closed_until: int | None = None     # every bucket ending at or before is closed
        self.retention_ms = max([w.size_ms for w in self.windows] + [HOUR_MS]) + HOUR_MS
        #: buckets are kept while a window reads them directly (every == bucket) or a pane
        #: that contains them is not built yet
        self.bucket_keep_ms = max([w.size_ms for w in self.windows if w.every_ms == self.bucket_ms]
                                  + self.pane_sizes + [0]) + self.bucket_ms
        self.next_midnight: int | None = None
        self._pending: list = []
        self.late_responses = 0
        self.too_late = 0

    #: whether `buckets` may not be in time order (a bucket made before a later one);
    #: class-level defaults also serve snapshots taken before these existed
    _unordered = True
    _newest = -(1 << 62)

    # -- input -------------------------------------------------------------------------
    def _new_bucket(self, start: int) -> Pane:
        bucket = self.buckets[start] = Pane()
        if start < self._newest:
            self._unordered = True
        else:
            self._newest = start
        return bucket

    def add_response(self, trust: str, category: str, stop_ts: int, ms: int) -> None:
        start = stop_ts - stop_ts % self.bucket_ms
        key = (trust, category)
        if self.closed_until is None or start >= self.closed_until:
            bucket = self.buckets.get(start)
            if bucket is None:
                bucket = self._new_bucket(start)
            vals = bucket.values.get(key)
            if vals is None:
                bucket.values[key] = [ms]
            else:
                vals.append(ms)
            return
        self._add_late(key, start, ms)

    def _late_bucket(self, start: int) -> Pane | None:
        """The closed bucket at `start`, recreated if it is still within retention."""
        bucket = self.buckets.get(start)
        if bucket is None and start >= self.closed_until - self.bucket_keep_ms:
            bucket = self._new_bucket(start)
        return bucket

    def _late_targets(self, start: int) -> list[Pane]:
        """Every retained bucket, pane and day holding the closed bucket at `start`."""
        targets = []
        bucket = self._late_bucket(start)
        if bucket is not None:
            targets.append(bucket)
        for size, panes in self.panes.items():
            pane = panes.get(start - start % size)
            if pane is not None:
                targets.append(pane)
        if self.days:
            day = self.days.get(local_day_start(start, self.tz))
            if day is not None:
                targets.append(day)
        return targets

    def _add_late(self, key: tuple[str, str], bucket_start: int, ms: int) -> None:
        self.late_responses += 1
        targets = self._late_targets(bucket_start)
        for pane in targets:
            vals = pane.values.get(key)
            if isinstance(vals, list):
                vals.append(ms)
                pane.late[key] = pane.late.get(key, 0) + 1
            else:
                pane.add_late(key, ms)
        if not targets:
            self.too_late += 1

    def add_total(self, trust: str, ts: int, which: int) -> None:
        start = ts - ts % self.bucket_ms
        if self.closed_until is None or start >= self.closed_until:
            bucket = self.buckets.get(start)
            if bucket is None:
                bucket = self._new_bucket(start)
            bucket.add_total(trust, which)
            return
        targets = self._late_targets(start)
        for pane in targets:
            pane.add_total(trust, which)
        if not targets:
            self.too_late += 1

    # -- closing -----------------------------------------------------------------------
    def close(self, end: int, pressure: Callable[[], dict]) -> list[dict]:
        """Close the bucket ending at `end`; return every window record ending there.

        `pressure()` gives (trust, category) -> (waiting, longest wait ms) at `end`; it is
        called only when a window is emitted. The centiles of all records are computed in
        one `segment_quantiles` kernel call (the sketch's exact answers, batched)."""
        self.closed_until = end
        self._pending = []
        out: list[dict] = []
        for i, size in enumerate(self.pane_sizes):
            if end % size == 0:
                self.panes[size][end - size] = _merge(self._pane_parts(end - size, end, i))
        for w in self.windows:
            if end % w.every_ms == 0:
                if w.every_ms == self.bucket_ms:
                    source = self.buckets
                else:
                    source = self.panes[w.every_ms]
                start = end - w.size_ms
                parts = [p for s in range(start, end, w.every_ms)
                         if (p := source.get(s)) is not None]
                out.extend(self._records(w.name, start, end, _merge(parts), pressure()))
        if self.calendar:
            out.extend(self._close_calendar(end, pressure))
        self._forget(end)
        if self._pending:
            self._fill_centiles(self._pending)
        return out

    def _pane_parts(self, start: int, end: int, i: int) -> list[Pane]:
        """What the pane [start, end) of `pane_sizes[i]` is made of: the panes of the largest
        smaller size that divides it (an hour of four quarter-hour panes rather than sixty
        buckets), when every one of them was made (each close makes its own; none before
        the first close or in a skipped empty stretch); else the buckets."""
        for smaller in reversed(self.pane_sizes[:i]):
            if (end - start) % smaller == 0:
                panes = self.panes[smaller]
                parts = [panes.get(s) for s in range(start, end, smaller)]
                if None not in parts:
                    return parts
                break
        return [b for s in range(start, end, self.bucket_ms)
                if (b := self.buckets.get(s)) is not None]

    def _fill_centiles(self, pending: list) -> None:
        """Mean, centiles, max and sum of every record with responses, from one
        concatenation: numpy calls per record cost more than the arithmetic."""
        arrays = [vals for _, vals in pending]
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum([len(a) for a in arrays], out=offsets[1:])
        ms = np.concatenate(arrays).astype(np.int64, copy=False)
        starts = offsets[:-1]
        totals = np.add.reduceat(ms, starts).tolist()
        highs = np.maximum.reduceat(ms, starts).tolist()
        qs = segment_quantiles(ms / 1000.0, offsets, QUANTILES, self.accuracy)
        for (rec, _), total, high, (p50, p90, p99) in zip(pending, totals, highs, qs.tolist()):
            rec["mean_s"] = round(total / rec["count"] / 1000.0, 3)
            rec["p50_s"] = round(p50, 3)
            rec["p90_s"] = round(p90, 3)
            rec["p99_s"] = round(p99, 3)
            rec["max_s"] = high / 1000.0
            rec["sum_s"] = total / 1000.0

    def _close_calendar(self, end: int, pressure: Callable[[], dict]) -> Iterator[dict]:
        if self.next_midnight is None:
            self.next_midnight = local_day_start(end, self.tz)
            if self.next_midnight < end:
                self.next_midnight = local_day_start(self.next_midnight + 36 * HOUR_MS, self.tz)
        if end != self.next_midnight:
            return
        day_start = local_day_start(end - 1, self.tz)
        panes = self.panes[_CALENDAR_PANE_MS]
        day = _merge([p for s in range(day_start, end, _CALENDAR_PANE_MS)
                      if (p := panes.get(s)) is not None])
        self.days[day_start] = day
        label = local_date(day_start, self.tz)
        if "day" in self.calendar:
            yield from self._records("day", day_start, end, day, pressure(), date=label)
        if "mtd" in self.calendar:
            month_start = local_month_start(end - 1, self.tz)
            mtd = _merge([d for s, d in sorted(self.days.items()) if s >= month_start])
            yield from self._records("mtd", month_start, end, mtd, pressure(), date=label)
            for s in [s for s in self.days if s < month_start]:
                del self.days[s]
        self.next_midnight = local_day_start(end + 36 * HOUR_MS, self.tz)

    def _forget(self, end: int) -> None:
        buckets = self.buckets
        if self._unordered:
            self.buckets = buckets = dict(sorted(buckets.items()))
            self._unordered = False
        # oldest first (kept in time order above): no scan of every bucket every close
        cutoff = end - self.bucket_keep_ms
        while buckets:
            s = next(iter(buckets))
            if s >= cutoff:
                break
            del buckets[s]
        for size, panes in self.panes.items():
            keep = self.retention_ms if size != _CALENDAR_PANE_MS else 26 * HOUR_MS
            # panes are made in time order, one per close (`close`), so the oldest come
            # first: no scan of a day's worth of panes every minute
            while panes:
                s = next(iter(panes))
                if s >= end - keep:
                    break
                del panes[s]

    # -- records -----------------------------------------------------------------------
    def _records(self, name: str, start: int, end: int, pane: Pane, pressure: dict,
                 date: str | None = None) -> Iterator[dict]:
        trusts = sorted({t for t, _ in pane.values} | set(pane.totals)
                        | {t for t, _ in pressure})
        if not trusts:
            return
        head = {"window": name, "start": format_ts(start), "end": format_ts(end)}
        if date is not None:
            head["date"] = date
        by_cat_all: dict[str, list] = {c: [] for c in CATEGORY_KEYS}
        late_all: dict[str, int] = {c: 0 for c in CATEGORY_KEYS}
        for (trust, cat), vals in pane.values.items():
            by_cat_all[cat].append(vals)
            late_all[cat] += pane.late.get((trust, cat), 0)
        totals_all = [0, 0, 0, 0]
        for t in pane.totals.values():
            for i in range(4):
                totals_all[i] += t[i]
        wait_all: dict[str, tuple[int, int]] = {}
        for (trust, cat), (n, longest) in pressure.items():
            old = wait_all.get(cat, (0, 0))
            wait_all[cat] = (old[0] + n, max(old[1], longest))
        # all trusts first
        for cat in CATEGORY_KEYS:
            parts = by_cat_all[cat]
            vals = parts[0] if len(parts) == 1 else (np.concatenate(parts) if parts else None)
            rec = self._category_record(head, ALL_TRUSTS, cat, vals, late_all[cat],
                                        wait_all.get(cat))
            if rec is not None:
                yield rec
        rec = self._totals_record(head, ALL_TRUSTS, totals_all, pane, None)
        if rec is not None:
            yield rec
        for trust in trusts:
            for cat in CATEGORY_KEYS:
                key = (trust, cat)
                rec = self._category_record(head, trust, cat, pane.values.get(key),
                                            pane.late.get(key, 0), pressure.get(key))
                if rec is not None:
                    yield rec
            rec = self._totals_record(head, trust, pane.totals.get(trust), pane, trust)
            if rec is not None:
                yield rec

    def _category_record(self, head: dict, trust: str, cat: str, vals, late: int,
                         wait: tuple[int, int] | None) -> dict | None:
        n = 0 if vals is None else len(vals)
        if n == 0 and not wait:
            return None
        rec = dict(head)
        rec["trust"] = trust
        rec["category"] = cat
        rec["count"] = n
        if n:
            # every figure is filled in one batch (`_fill_centiles`); the keys go in now, in
            # the record's order
            rec["mean_s"] = rec["p50_s"] = rec["p90_s"] = rec["p99_s"] = rec["max_s"] = None
            rec["sum_s"] = None
            self._pending.append((rec, vals))
        else:
            rec["mean_s"] = rec["p50_s"] = rec["p90_s"] = rec["p99_s"] = rec["max_s"] = None
            rec["sum_s"] = 0.0
        rec["late"] = late
        if cat != "C1T":
            waiting, longest = wait or (0, 0)
            rec["waiting"] = waiting
            rec["longest_wait_s"] = longest / 1000.0
        return rec

    def _totals_record(self, head: dict, trust: str, totals, pane: Pane,
                       only: str | None) -> dict | None:
        responses = sum(len(v) for (t, c), v in pane.values.items()
                        if c != "C1T" and (only is None or t == only))
        if not totals and not responses:
            return None
        totals = totals or [0, 0, 0, 0]
        rec = dict(head)
        rec["trust"] = trust
        rec["category"] = ALL
        for i, name in enumerate(_TOTAL_NAMES):
            rec[name] = totals[i]
        rec["responses"] = responses
        return rec
