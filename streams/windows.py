"""Event-time windows: aligned buckets per (trust, category), merged into rolling and calendar
windows and emitted once when the watermark passes their end (CONTRACT §3-4).

A bucket keeps the response times (integer ms) that stopped in it. When a pane (one per window
`every`), window or calendar day closes, its buckets and smaller panes are summed into a
`Span`: per (trust, category) exact count, sum, min and max, and a histogram of the values by
sketch bucket, which is all a record's centiles read (the sketch's own answers, whatever the
arrival order). Late responses (their bucket already closed) are added to every bucket, pane
and day that already holds their bucket, counted as `late`, and never lost.

A window's records at a close are a `WindowRecords`: the span's arrays, rendered as dicts
(the reference) or, for the live merge, as Kafka keys and JSON values by one kernel call."""

from __future__ import annotations

from itertools import chain
from typing import Callable, Iterator

import numpy as np
import orjson

from streams.settings import HOUR_MS, ProcessingSettings, RollingWindow
from streams.fast.spans import (COUNT, EMPTY_EXT, HIGH, LATE, SUM, accumulate, positions,
                                span_quantiles)
from streams.fast.windows import span_record_text
from streams.sketch import _mapping
from streams.timefmt import format_ts, local_date, local_day_start, local_month_start

#: Category keys of window records, in output order (C1T is a reporting split of C1).
CATEGORY_KEYS = ("C1", "C1T", "C2", "C3", "C4")
#: Categories calls wait in for a crew (C1T is known only once one arrives), in the order
#: waiting state is numbered in columns (`BoundaryBatch.waiting`, `OutcomeColumns.waiting`).
WAIT_CATEGORIES = ("C1", "C2", "C3", "C4")
ALL = "ALL"
ALL_TRUSTS = "*"
QUANTILES = (0.5, 0.9, 0.99)
_CALENDAR_PANE_MS = 15 * 60_000   # every real time-zone offset is a multiple of 15 min

# per-trust call totals: calls, hear_and_treat, redirected, redirected_c1
CALLS, HEAR_AND_TREAT, REDIRECTED, REDIRECTED_C1 = range(4)
_CATEGORY_INDEX = {c: i for i, c in enumerate(CATEGORY_KEYS)}
_QS = np.array(QUANTILES, np.float64)


class Pane:
    """Responses and call totals of one bucket (panes and days of snapshots from before
    `Span` are Panes too, holding value arrays). Outcomes come one at a time (`values`,
    `totals`: the offline join's, late ones) or as columns (`responses`, `counts`: the live
    merge's, a step of boundaries at a time)."""

    __slots__ = ("values", "late", "totals", "responses", "counts")

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], list[int] | np.ndarray] = {}
        self.late: dict[tuple[str, str], int] = {}
        self.totals: dict[str, list[int]] = {}
        #: (span rows, ms) array pairs (row = trust id * 5 + category index, as `Span`)
        self.responses: list[tuple[np.ndarray, np.ndarray]] = []
        #: call totals by trust id ([trust id, total kind]), or None
        self.counts: np.ndarray | None = None

    def __setstate__(self, state) -> None:
        self.responses, self.counts = [], None          # panes pickled before the columns
        restore_slots(self, state)

    def add_counts(self, counts: np.ndarray) -> None:
        """Add call totals by trust id (a [trust id, total kind] array)."""
        have = self.counts
        if have is None:
            self.counts = counts
        elif have.shape[0] >= counts.shape[0]:
            have[:counts.shape[0]] += counts
        else:
            counts = counts.copy()
            counts[:have.shape[0]] += have
            self.counts = counts

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


class Span:
    """A closed span (a pane, a window, a calendar day) as dense aggregates: one row per
    (trust, category) (row = trust id * 5 + category index, trust ids the store's): exact
    count, sum, late, zeros, max and min (ms), and a histogram of the positive values by
    sketch position (column = position - `base`); call totals per trust id. Spans add up
    (`WindowStore._span`), so a window costs its panes' rows, not every value in it."""

    __slots__ = ("stat", "ext", "base", "hist", "totals")

    def __init__(self, n_trusts: int, base: int, width: int) -> None:
        rows = n_trusts * len(CATEGORY_KEYS)
        self.stat = np.zeros((rows, 4), np.int64)      # count, sum ms, late, zeros
        self.ext = np.empty((rows, 2), np.int64)       # max ms, -min ms
        self.ext[:] = EMPTY_EXT
        self.base = base
        self.hist = np.zeros((rows, width), np.int32)
        self.totals = np.zeros((n_trusts, 4), np.int64)

    def add(self, other: "Span") -> None:
        """Add `other` in place (its rows and positions fit in this span's)."""
        r = other.stat.shape[0]
        self.stat[:r] += other.stat
        np.maximum(self.ext[:r], other.ext, out=self.ext[:r])
        if other.hist.shape[1]:
            lo = other.base - self.base
            self.hist[:r, lo:lo + other.hist.shape[1]] += other.hist
        self.totals[:other.totals.shape[0]] += other.totals

    def fit(self, n_trusts: int, lo: int, hi: int) -> None:
        """Grow (in place) to `n_trusts` trusts and positions [lo, hi] (none if hi < lo):
        a late response or call total."""
        rows, width = self.hist.shape
        new_rows = max(rows, n_trusts * len(CATEGORY_KEYS))
        if width:
            if hi < lo:
                lo, hi = self.base, self.base + width - 1
            else:
                lo, hi = min(lo, self.base), max(hi, self.base + width - 1)
        if new_rows == rows and hi - lo + 1 == width and (not width or lo == self.base):
            return
        grown = Span(new_rows // len(CATEGORY_KEYS), lo if hi >= lo else 0, max(hi - lo + 1, 0))
        grown.add(self)
        self.stat, self.ext, self.base = grown.stat, grown.ext, grown.base
        self.hist, self.totals = grown.hist, grown.totals


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
        self.days: dict[int, Span] = {}          # local day start -> day span (for mtd)
        self.closed_until: int | None = None     # every bucket ending at or before is closed
        self.retention_ms = max([w.size_ms for w in self.windows] + [HOUR_MS]) + HOUR_MS
        #: buckets are kept while a window reads them directly (every == bucket) or a pane
        #: that contains them is not built yet
        self.bucket_keep_ms = max([w.size_ms for w in self.windows if w.every_ms == self.bucket_ms]
                                  + self.pane_sizes + [0]) + self.bucket_ms
        self.next_midnight: int | None = None
        #: trust ids: a span's rows (`Span`)
        self.trust_ids: dict[str, int] = {}
        self.trust_names: list[str] = []
        self.late_responses = 0
        self.too_late = 0

    def __setstate__(self, state: dict) -> None:
        # snapshots from before spans: their panes and days are value `Pane`s, which
        # `_span` and the late path still read
        state.setdefault("trust_ids", {})
        state.setdefault("trust_names", [])
        state.pop("_pending", None)
        self.__dict__.update(state)

    def _trust_id(self, trust: str) -> int:
        t = self.trust_ids.get(trust)
        if t is None:
            t = self.trust_ids[trust] = len(self.trust_names)
            self.trust_names.append(trust)
        return t

    def _row(self, key: tuple[str, str]) -> int:
        return self._trust_id(key[0]) * len(CATEGORY_KEYS) + _CATEGORY_INDEX[key[1]]

    #: whether `buckets` may not be in time order (a bucket made before a later one);
    #: class-level defaults also serve snapshots taken before these existed
    _unordered = True
    _newest = -(1 << 62)

    # -- input -------------------------------------------------------------------------
    def _bucket(self, start: int) -> Pane:
        bucket = self.buckets.get(start)
        if bucket is None:
            bucket = self._new_bucket(start)
        return bucket

    def _new_bucket(self, start: int) -> Pane:
        bucket = self.buckets[start] = Pane()
        if start < self._newest:
            self._unordered = True
        else:
            self._newest = start
        return bucket

    def add_outcomes(self, calls, responses) -> None:
        """Many `add_total`s ((trust, ts, kind), a C1 redirect counted as a redirect too)
        and `add_response`s ((trust, category, stop, ms)) in one call: the merge's hottest
        loop, so the on-time path is written out here; late ones go the single way."""
        bucket_ms = self.bucket_ms
        closed = self.closed_until if self.closed_until is not None else -(1 << 62)
        at, bucket = None, None
        for trust, ts, kind in calls:
            start = ts - ts % bucket_ms
            if start < closed:
                if kind == REDIRECTED_C1:
                    self._add_late_total(trust, start, REDIRECTED)
                self._add_late_total(trust, start, kind)
                continue
            if start != at:
                at, bucket = start, self._bucket(start)
            t = bucket.totals.get(trust)
            if t is None:
                t = bucket.totals[trust] = [0, 0, 0, 0]
            t[kind] += 1
            if kind == REDIRECTED_C1:
                t[REDIRECTED] += 1
        for trust, category, stop_ts, ms in responses:
            start = stop_ts - stop_ts % bucket_ms
            if start < closed:
                self._add_late((trust, category), start, ms)
                continue
            if start != at:
                at, bucket = start, self._bucket(start)
            vals = bucket.values.get((trust, category))
            if vals is None:
                bucket.values[(trust, category)] = [ms]
            else:
                vals.append(ms)

    def add_response(self, trust: str, category: str, stop_ts: int, ms: int) -> None:
        self.add_outcomes((), ((trust, category, stop_ts, ms),))

    def ids_of(self, names: tuple[str, ...]) -> np.ndarray:
        """The store's trust ids of `names` (span rows are numbered by them)."""
        return np.array([self._trust_id(n) for n in names], np.int64)

    def add_bucket_columns(self, starts: np.ndarray, rows: np.ndarray, ms: np.ndarray,
                           call_starts: np.ndarray, call_trusts: np.ndarray,
                           call_kinds: np.ndarray) -> None:
        """On-time outcomes as columns, into their buckets (none of them closed): responses
        by bucket start, span row (`Span`) and ms; call totals by bucket start, trust id and
        total kind (a C1 redirect counted as a redirect too)."""
        for start, pick in _groups(starts):
            self._bucket(start).responses.append((rows[pick], ms[pick]))
        if not len(call_starts):
            return
        r1 = call_kinds == REDIRECTED_C1
        if r1.any():
            call_starts = np.concatenate([call_starts, call_starts[r1]])
            call_trusts = np.concatenate([call_trusts, call_trusts[r1]])
            call_kinds = np.concatenate([call_kinds, np.full(int(r1.sum()), REDIRECTED,
                                                             np.int64)])
        nt = len(self.trust_names)
        groups = _groups(call_starts)
        at = np.empty(len(call_starts), np.int64)
        for g, (_, pick) in enumerate(groups):
            at[pick] = g
        counts = np.bincount((at * nt + call_trusts) * 4 + call_kinds,
                             minlength=len(groups) * nt * 4).reshape(len(groups), nt, 4)
        for g, (start, _) in enumerate(groups):
            self._bucket(start).add_counts(counts[g])

    def _late_bucket(self, start: int) -> Pane | None:
        """The closed bucket at `start`, recreated if it is still within retention."""
        bucket = self.buckets.get(start)
        if bucket is None and start >= self.closed_until - self.bucket_keep_ms:
            bucket = self._new_bucket(start)
        return bucket

    def _late_targets(self, start: int) -> list[Pane | Span]:
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
            if type(pane) is Span:
                self._late_into_span(pane, key, ms)
                continue
            vals = pane.values.get(key)
            if isinstance(vals, list):
                vals.append(ms)
                pane.late[key] = pane.late.get(key, 0) + 1
            else:
                pane.add_late(key, ms)
        if not targets:
            self.too_late += 1

    def _late_into_span(self, span: Span, key: tuple[str, str], ms: int) -> None:
        row = self._row(key)
        m = _mapping(self.accuracy)
        pos, lo, hi = positions(np.array([ms], np.int64), m.table, m.bounds,
                                np.int64(m.shift))
        span.fit(len(self.trust_names), lo, hi)
        accumulate(np.array([row], np.int64), np.array([ms], np.int64), pos,
                   np.int64(span.base), span.stat, span.ext, span.hist)
        span.stat[row, LATE] += 1

    def add_total(self, trust: str, ts: int, which: int) -> None:
        """One call total (`which`: CALLS ... REDIRECTED_C1, that one counter only)."""
        start = ts - ts % self.bucket_ms
        if self.closed_until is None or start >= self.closed_until:
            self._bucket(start).add_total(trust, which)
        else:
            self._add_late_total(trust, start, which)

    def _add_late_total(self, trust: str, start: int, which: int) -> None:
        targets = self._late_targets(start)
        for pane in targets:
            if type(pane) is Span:
                t = self._trust_id(trust)
                pane.fit(len(self.trust_names), 0, -1)
                pane.totals[t, which] += 1
            else:
                pane.add_total(trust, which)
        if not targets:
            self.too_late += 1

    # -- closing -----------------------------------------------------------------------
    def close(self, end: int, pressure: Callable[[], dict]) -> list[dict]:
        """Close the bucket ending at `end`; return every window record ending there.

        `pressure()` gives (trust, category) -> (waiting, longest wait ms) at `end`; it is
        called only when a window is emitted."""
        return [r for w in self.close_windows(end, pressure) for r in w.dicts()]

    def close_windows(self, end: int, pressure: Callable[[], dict]) -> list["WindowRecords"]:
        """`close`, each window's records kept as the arrays they are made from."""
        self.closed_until = end
        out: list[WindowRecords] = []
        for i, size in enumerate(self.pane_sizes):
            if end % size == 0:
                self.panes[size][end - size] = self._span(self._pane_parts(end - size, end, i))
        for w in self.windows:
            if end % w.every_ms == 0:
                if w.every_ms == self.bucket_ms:
                    source = self.buckets
                else:
                    source = self.panes[w.every_ms]
                start = end - w.size_ms
                parts = [p for s in range(start, end, w.every_ms)
                         if (p := source.get(s)) is not None]
                got = self._records(w.name, start, end, self._span(parts), pressure())
                if got is not None:
                    out.append(got)
        if self.calendar:
            out.extend(w for w in self._close_calendar(end, pressure) if w is not None)
        self._forget(end)
        return out

    def _pane_parts(self, start: int, end: int, i: int) -> list[Pane | Span]:
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

    def _span(self, parts: list) -> Span:
        """`parts` (buckets' values, spans) summed into a new Span: a bucket's values are
        added in one kernel call for all buckets, a span by adding its arrays."""
        spans = []
        rows, lens, values, late, totals = [], [], [], [], []
        col_rows, col_ms, counts = [], [], []
        for part in parts:
            if type(part) is Span:
                spans.append(part)
                continue
            for key, vals in part.values.items():        # a bucket (or an older pane)
                rows.append(self._row(key))
                lens.append(len(vals))
                values.append(vals)
            if part.responses:
                if len(part.responses) > 1:              # read again by every window: once
                    part.responses = [(np.concatenate([r for r, _ in part.responses]),
                                       np.concatenate([m for _, m in part.responses]))]
                r, m = part.responses[0]
                col_rows.append(r)
                col_ms.append(m)
            if part.counts is not None:
                counts.append(part.counts)
            for key, n in part.late.items():
                late.append((self._row(key), n))
            for trust, t in part.totals.items():
                totals.append((self._trust_id(trust), t))
        lo, hi = 1 << 62, -1
        if values or col_ms:
            if values:
                col_ms.append(np.fromiter(chain.from_iterable(values), np.int64, sum(lens)))
                col_rows.append(np.repeat(np.array(rows, np.int64), lens))
            ms = col_ms[0] if len(col_ms) == 1 else np.concatenate(col_ms)
            m = _mapping(self.accuracy)
            pos, lo, hi = positions(ms, m.table, m.bounds, np.int64(m.shift))
        for sp in spans:
            w = sp.hist.shape[1]
            if w:
                lo = min(lo, sp.base)
                hi = max(hi, sp.base + w - 1)
        out = Span(len(self.trust_names), lo if hi >= lo else 0, max(hi - lo + 1, 0))
        for sp in spans:
            out.add(sp)
        if col_ms:
            rows_all = col_rows[0] if len(col_rows) == 1 else np.concatenate(col_rows)
            accumulate(rows_all, ms, pos, np.int64(out.base), out.stat, out.ext, out.hist)
        for row, n in late:
            out.stat[row, LATE] += n
        for tid, t in totals:
            out.totals[tid] += t
        for c in counts:
            out.totals[:c.shape[0]] += c
        return out

    def _close_calendar(self, end: int, pressure: Callable[[], dict]
                        ) -> Iterator["WindowRecords | None"]:
        if self.next_midnight is None:
            self.next_midnight = local_day_start(end, self.tz)
            if self.next_midnight < end:
                self.next_midnight = local_day_start(self.next_midnight + 36 * HOUR_MS, self.tz)
        if end != self.next_midnight:
            return
        day_start = local_day_start(end - 1, self.tz)
        panes = self.panes[_CALENDAR_PANE_MS]
        day = self._span([p for s in range(day_start, end, _CALENDAR_PANE_MS)
                      if (p := panes.get(s)) is not None])
        self.days[day_start] = day
        label = local_date(day_start, self.tz)
        if "day" in self.calendar:
            yield self._records("day", day_start, end, day, pressure(), date=label)
        if "mtd" in self.calendar:
            month_start = local_month_start(end - 1, self.tz)
            mtd = self._span([d for s, d in sorted(self.days.items()) if s >= month_start])
            yield self._records("mtd", month_start, end, mtd, pressure(), date=label)
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
    def _records(self, name: str, start: int, end: int, span: Span, pressure: dict,
                 date: str | None = None) -> "WindowRecords | None":
        nt = span.totals.shape[0]
        nc = len(CATEGORY_KEYS)
        names = self.trust_names
        ids = self.trust_ids
        present = span.stat[:, COUNT].reshape(nt, nc).any(axis=1) | span.totals.any(axis=1)
        order = set(np.flatnonzero(present).tolist())
        extra: dict[str, int] = {}            # waiting calls of a trust with no row yet
        waits = []
        for (trust, cat), wait in pressure.items():
            t = ids.get(trust)
            if t is None:
                t = extra.setdefault(trust, len(names) + len(extra))
            order.add(t)
            waits.append((t, _CATEGORY_INDEX[cat], wait))
        if not order:
            return None
        if extra:
            names = names + list(extra)
        n_all = len(names)
        wn = np.zeros((n_all + 1, nc), np.int64)
        wl = np.zeros((n_all + 1, nc), np.int64)
        hw = np.zeros((n_all + 1, nc), np.bool_)
        for t, c, (n, longest) in waits:
            wn[t, c] = n
            wl[t, c] = longest
            hw[t, c] = True
        if pressure:
            wn[n_all] = wn[:n_all].sum(axis=0)
            wl[n_all] = wl[:n_all].max(axis=0)
            hw[n_all] = hw[:n_all].any(axis=0)
        # every trust's rows, then the all-trusts rows; centiles of all in one kernel call
        width = span.hist.shape[1]
        stat = np.concatenate([span.stat, span.stat.reshape(nt, nc, 4).sum(axis=0)])
        ext = np.concatenate([span.ext,
                              span.ext.reshape(nt, nc, 2).max(axis=0, initial=EMPTY_EXT[1])])
        hist = np.concatenate([span.hist,
                               span.hist.reshape(nt, nc, width).sum(axis=0, dtype=np.int32)])
        quantiles = span_quantiles(stat, ext, hist, np.int64(span.base), _QS,
                                   _mapping(self.accuracy).reps)
        totals = np.concatenate([span.totals, span.totals.sum(axis=0, keepdims=True)])
        head = {"window": name, "start": format_ts(start), "end": format_ts(end)}
        if date is not None:
            head["date"] = date
        ranked = sorted(order, key=names.__getitem__)
        return WindowRecords(head, names, nt, stat, ext, quantiles, totals, wn, wl, hw,
                             np.array(ranked, np.int64), self._name_text(names))

    #: (trust count, (JSON names, offsets, raw names, offsets)) for `WindowRecords.text`
    _names_text: tuple | None = None

    def _name_text(self, names: list[str]) -> tuple:
        cached = self._names_text
        if cached is not None and cached[0] == len(names) and names is self.trust_names:
            return cached[1]
        made = _name_columns(names)
        if names is self.trust_names:
            self._names_text = (len(names), made)
        return made


class WindowRecords:
    """The records of one window at one close, as the span's arrays they are made from (the
    last rows are all trusts), rendered as dicts (`dicts`: the reference, and what the
    offline replay writes) or as JSON text with their Kafka keys by one kernel call
    (`text`: the merge publishes hundreds of thousands). `trust_ids` are the trusts with
    records, in output order."""

    __slots__ = ("head", "names", "n_span", "stat", "ext", "quantiles", "totals", "wn", "wl",
                 "hw", "trust_ids", "name_text", "_dicts")

    def __init__(self, head: dict, names: list[str], n_span: int, stat: np.ndarray,
                 ext: np.ndarray, quantiles: np.ndarray, totals: np.ndarray, wn: np.ndarray,
                 wl: np.ndarray, hw: np.ndarray, trust_ids: np.ndarray, name_text: tuple):
        self.head = head
        self.names = names
        self.n_span = n_span
        self.stat = stat
        self.ext = ext
        self.quantiles = quantiles
        self.totals = totals
        self.wn = wn
        self.wl = wl
        self.hw = hw
        self.trust_ids = trust_ids
        self.name_text = name_text
        self._dicts: list[dict] | None = None

    @property
    def name(self) -> str:
        return self.head["window"]

    @property
    def date(self) -> str | None:
        return self.head.get("date")

    def trusts(self) -> list[str]:
        names = self.names
        return [names[t] for t in self.trust_ids.tolist()]

    def dicts(self) -> list[dict]:
        """The records as dicts, in output order (computed once)."""
        if self._dicts is not None:
            return self._dicts
        nc = len(CATEGORY_KEYS)
        nt = self.n_span
        head = self.head
        stat = self.stat.tolist()
        ext = self.ext.tolist()
        quantiles = self.quantiles.tolist()
        totals = self.totals.tolist()
        wn, wl, hw = self.wn.tolist(), self.wl.tolist(), self.hw.tolist()
        out: list[dict] = []
        for t in [-1] + self.trust_ids.tolist():
            trust = ALL_TRUSTS if t < 0 else self.names[t]
            w = len(wn) - 1 if t < 0 else t
            if t >= nt:                        # only waiting calls
                for c, cat in enumerate(CATEGORY_KEYS):
                    if hw[w][c]:
                        out.append(_category_record(head, trust, cat, None, None, None,
                                                    (wn[w][c], wl[w][c])))
                continue
            base = (nt if t < 0 else t) * nc
            for c, cat in enumerate(CATEGORY_KEYS):
                rec = _category_record(head, trust, cat, stat[base + c], ext[base + c],
                                       quantiles[base + c],
                                       (wn[w][c], wl[w][c]) if hw[w][c] else None)
                if rec is not None:
                    out.append(rec)
            responses = _responses(stat, base)
            tt = totals[nt if t < 0 else t]
            if t < 0 or responses or any(tt):
                out.append(_totals_record(head, trust, tt, responses))
        self._dicts = out
        return out

    def text(self) -> tuple[bytes, list[int], bytes, list[int]] | None:
        """(values, value offsets, keys, key offsets) of the records, as orjson writes
        `dicts()` (value i is values[offs[i]:offs[i + 1] - 1]); None when a figure is too
        large for the kernel (the caller writes the dicts)."""
        tname, tname_off, kname, kname_off = self.name_text
        head = orjson.dumps(self.head)[:-1]
        wkey = self.head["window"].encode()
        most = (len(self.trust_ids) + 1) * (len(CATEGORY_KEYS) + 1)
        longest = max(int(np.diff(tname_off).max(initial=0)), 3)
        out = np.empty(most * (len(head) + longest + 320), np.uint8)
        kout = np.empty(most * (longest + len(wkey) + 8), np.uint8)
        voff = np.zeros(most + 1, np.int64)
        koff = np.zeros(most + 1, np.int64)
        n = span_record_text(np.frombuffer(head, np.uint8), tname, tname_off, kname,
                             kname_off, np.frombuffer(wkey, np.uint8), self.trust_ids,
                             self.n_span, self.stat, self.ext, self.quantiles, self.totals,
                             self.wn, self.wl, self.hw, out, voff, kout, koff,
                             np.zeros(6, np.int64), np.zeros(5, np.int64),
                             np.zeros(1, np.float64))
        if n < 0:
            return None
        return (out[:voff[n]].tobytes(), voff[:n + 1].tolist(), kout[:koff[n]].tobytes(),
                koff[:n + 1].tolist())


def stats_key(record: dict) -> bytes:
    """A stats record's Kafka key: one key per (trust, category, window) series."""
    return f"{record['trust']}/{record['category']}/{record['window']}".encode()


def text_of(records: list[dict]) -> tuple[bytes, list[int], bytes, list[int]]:
    """`WindowRecords.text` for records as dicts (figures the kernel leaves to Python)."""
    values = [orjson.dumps(r) + b"\n" for r in records]
    keys = [stats_key(r) for r in records]
    return (b"".join(values), np.cumsum([0] + [len(v) for v in values]).tolist(),
            b"".join(keys), np.cumsum([0] + [len(k) for k in keys]).tolist())


def _name_columns(names: list[str]) -> tuple:
    """Trust names as JSON strings and as raw UTF-8 (keys), each concatenated + offsets."""
    quoted = [orjson.dumps(n) for n in names]
    raw = [n.encode() for n in names]
    return (np.frombuffer(b"".join(quoted) or b"\0", np.uint8),
            np.cumsum([0] + [len(q) for q in quoted]).astype(np.int64),
            np.frombuffer(b"".join(raw) or b"\0", np.uint8),
            np.cumsum([0] + [len(r) for r in raw]).astype(np.int64))


def restore_slots(obj, state) -> None:
    """Set what the pickled state of a `__slots__` object holds (`(None, slots)` or a
    dict); a `__setstate__` sets defaults for slots added since, then calls this."""
    for part in state if isinstance(state, tuple) else (state,):
        for k, v in (part or {}).items():
            setattr(obj, k, v)


def _groups(starts: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(start, indexes of the items at that start) for each distinct start, in order."""
    if not len(starts):
        return []
    order = np.argsort(starts, kind="stable")
    s = starts[order]
    cuts = (np.flatnonzero(s[1:] != s[:-1]) + 1).tolist()
    return [(int(s[a]), order[a:b]) for a, b in zip([0] + cuts, cuts + [len(s)])]


def _responses(stat: list, base: int) -> int:
    """Responses of a trust's rows (or the all-trusts rows) at `base`: C1T is a split of C1."""
    return sum(stat[base + c][COUNT] for c, cat in enumerate(CATEGORY_KEYS) if cat != "C1T")


def _category_record(head: dict, trust: str, cat: str, stat: list | None, ext: list | None,
                     quantiles: list | None, wait: tuple[int, int] | None) -> dict | None:
    n = stat[COUNT] if stat is not None else 0
    if n == 0 and wait is None:
        return None
    # made whole by one display (not key by key): the merge makes hundreds of thousands;
    # the keys' order is the record's field order on the wire
    if n:
        total = stat[SUM]
        p50, p90, p99 = quantiles
        rec = {**head, "trust": trust, "category": cat, "count": n,
               "mean_s": round(total / n / 1000.0, 3), "p50_s": round(p50, 3),
               "p90_s": round(p90, 3), "p99_s": round(p99, 3), "max_s": ext[HIGH] / 1000.0,
               "sum_s": total / 1000.0, "late": stat[LATE]}
    else:
        rec = {**head, "trust": trust, "category": cat, "count": n, "mean_s": None,
               "p50_s": None, "p90_s": None, "p99_s": None, "max_s": None, "sum_s": 0.0,
               "late": 0}
    if cat != "C1T":
        waiting, longest = wait or (0, 0)
        rec["waiting"] = waiting
        rec["longest_wait_s"] = longest / 1000.0
    return rec


def _totals_record(head: dict, trust: str, totals: list[int], responses: int) -> dict:
    calls, hear_and_treat, redirected, redirected_c1 = totals
    return {**head, "trust": trust, "category": ALL, "calls": calls,
            "hear_and_treat": hear_and_treat, "redirected": redirected,
            "redirected_c1": redirected_c1, "responses": responses}
