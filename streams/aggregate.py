"""The window half of the processing core: outcomes in, window records and alerts out.

The per-call join (`streams.episodes`) reports outcomes (a call, a hear-and-treat, a redirect,
a response); `WindowTotals` adds them to the windows and the summary, and at each closed
bucket closes windows and runs the rules. The offline `Processor` wires one join straight into
it; the live worker runs one join per input partition (`streams.partition`) and merges their
per-bucket outcomes here through `PartitionMerge`, so both paths share this code and give the
same records. Every outcome is added to a multiset (values per bucket, integer sums), so the
order in which partitions' outcomes arrive within a bucket does not change any output."""

from __future__ import annotations

from collections import deque
from itertools import chain
from typing import Callable, Iterable, Protocol

import numpy as np

from streams.events import DeadLetter
from streams.outcomes import (B_ACTIVE, B_C0, B_C1, B_END, B_R0, B_R1, B_W0, B_W1, B_WHOLE,
                              OutcomeColumns)
from streams.rules import BoundaryBatch, ClosedWindows
from streams.settings import ProcessingSettings
from streams.sketch import QuantileSketch
from streams.fast.alerts import record_figures
from streams.fast.spans import COUNT, SUM
from streams.windows import (ALL_TRUSTS, CALLS, CATEGORY_KEYS, HEAR_AND_TREAT, QUANTILES,
                             REDIRECTED, REDIRECTED_C1, WAIT_CATEGORIES, WindowRecords,
                             WindowStore, restore_slots, text_of)


class Outputs(Protocol):
    """Where results go: files for the offline replay, Kafka topics for the worker. Outputs
    that also have `windows(groups) -> int` take each close's `WindowRecords` as they are
    (and say how many records they hold) instead of one `stats` call per record."""

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


class TextOutputs(CollectingOutputs):
    """The merge's outputs: window records go out as Kafka keys and JSON values written by
    one kernel call per window close (`WindowRecords.text`), never as dicts (a dict and its
    orjson text per record were a third of the merge's time)."""

    def __init__(self) -> None:
        super().__init__()
        #: (values, value offsets, keys, key offsets) per window close, in output order
        self.stats_text: list[tuple[bytes, list[int], bytes, list[int]]] = []

    def windows(self, groups: list[WindowRecords]) -> int:
        n = 0
        for w in groups:
            text = w.text()
            if text is None:
                text = text_of(w.dicts())
            self.stats_text.append(text)
            n += len(text[1]) - 1
        return n


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

    def add(self, ms: int) -> None:
        self.count += 1
        self.sum_ms += ms
        if ms > self.max_ms:
            self.max_ms = ms
        self.pending.append(ms)
        if len(self.pending) >= 65536:
            self.flush()

    def add_many(self, ms: np.ndarray) -> None:
        """`add` for each of `ms` (integer ms)."""
        if not len(ms):
            return
        self.count += len(ms)
        self.sum_ms += int(ms.sum())
        self.max_ms = max(self.max_ms, int(ms.max()))
        self.pending += ms.tolist()
        if len(self.pending) >= 65536:
            self.flush()

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


class WindowTotals:
    """Windows, summary totals and rules, fed outcomes; closed one bucket at a time."""

    def __init__(self, settings: ProcessingSettings, outputs: Outputs,
                 rules: Rules | None = None) -> None:
        self.settings = settings
        self.outputs = outputs
        self.rules = rules
        self.windows = WindowStore(settings)
        self.calls = 0
        self.hear_and_treat = 0
        self.redirected = 0
        self.categories = {c: CategoryTotals(settings.relative_accuracy) for c in CATEGORY_KEYS}
        self.last_call: dict[str, int] = {}
        self.dead_letters: dict[str, int] = {}
        self.stats_records = 0
        self.alert_records = 0

    # -- outcomes (the join's OutcomeSink, window half) ---------------------------------
    def on_call(self, trust: str, ts: int) -> None:
        self.add_outcomes(((trust, ts, CALLS),), ())

    def on_hear_and_treat(self, trust: str, ts: int) -> None:
        self.add_outcomes(((trust, ts, HEAR_AND_TREAT),), ())

    def on_redirected(self, trust: str, ts: int, category: str | None) -> None:
        self.add_outcomes(((trust, ts, REDIRECTED_C1 if category == "C1" else REDIRECTED),), ())

    def on_response(self, trust: str, category: str, stop_ts: int, ms: int) -> None:
        self.add_outcomes((), ((trust, category, stop_ts, ms),))

    def add_outcomes(self, calls: list, responses: list) -> None:
        """A partition's outcomes of one bucket: `calls` as (trust, ts, kind) with kind
        CALLS, HEAR_AND_TREAT, REDIRECTED or REDIRECTED_C1 (a C1 redirect), `responses` as
        (trust, category, stop, ms). The one place outcomes reach the windows and totals
        (the `on_*` hooks of the offline join come here too); the merge adds a bucket's
        outcomes in one call, its hottest loop."""
        if calls:
            last_call = self.last_call
            n_calls = self.calls
            for trust, ts, kind in calls:
                if kind == CALLS:
                    n_calls += 1
                    if ts > last_call.get(trust, -1):
                        last_call[trust] = ts
                elif kind == HEAR_AND_TREAT:
                    self.hear_and_treat += 1
                else:
                    self.redirected += 1
            self.calls = n_calls
        if responses:
            categories = self.categories
            for _, cat, _, ms in responses:
                categories[cat].add(ms)
        self.windows.add_outcomes(calls, responses)

    def add_step(self, ends: list[int], segments: list[tuple]) -> list[tuple | None]:
        """Outcomes of a run of boundaries `ends` (a merge step) as columns: `segments` of
        (trust names, boundary of each call, calls [trust, ts, kind], boundary of each
        response, responses [trust, category, stop, ms]), trusts numbered per segment; an
        outcome's boundary is the one it is added before. What does not depend on when it
        is added goes in now (counters, category totals, on-time outcomes into their
        buckets: none of them is read before its boundary); per boundary, what does is
        returned for `at_boundary`: (late calls, late responses, latest calls) or None."""
        windows = self.windows
        calls, responses = [], []
        for names, cj, cs, rj, rs in segments:
            ids = windows.ids_of(names)
            if len(cs):
                calls.append((cj, ids[cs[:, 0]], cs[:, 1], cs[:, 2]))
            if len(rs):
                responses.append((rj, ids[rs[:, 0]], rs[:, 1], rs[:, 2], rs[:, 3]))
        m = len(ends)
        out: list[tuple | None] = [None] * m
        if not calls and not responses:
            return out
        bucket = self.settings.bucket_ms
        closed = np.array([-(1 << 62) if windows.closed_until is None else windows.closed_until]
                          + ends[:-1], np.int64)        # closed through, before each boundary
        names = windows.trust_names
        late_calls: dict[int, list] = {}
        late_responses: dict[int, list] = {}
        latest: dict[int, list] = {}
        none = np.zeros(0, np.int64)
        c_start = c_tid = c_kind = r_start = r_row = r_ms = none
        if calls:
            j, tid, ts, kind = (np.concatenate(x) for x in zip(*calls))
            n = np.bincount(kind, minlength=4)
            self.calls += int(n[CALLS])
            self.hear_and_treat += int(n[HEAR_AND_TREAT])
            self.redirected += int(n[REDIRECTED] + n[REDIRECTED_C1])
            # each trust's latest call by boundary (a call may come late: still its latest)
            pick = kind == CALLS
            if pick.any():
                key = j[pick] * len(names) + tid[pick]
                t = ts[pick]
                order = np.lexsort((t, key))
                key, t = key[order], t[order]
                last = np.append(key[1:] != key[:-1], True)
                for k, v in zip(key[last].tolist(), t[last].tolist()):
                    latest.setdefault(k // len(names), []).append((names[k % len(names)], v))
            start = ts - ts % bucket
            on = start >= closed[j]
            if not on.all():
                for x, t, v, k in zip(j[~on].tolist(), tid[~on].tolist(), ts[~on].tolist(),
                                      kind[~on].tolist()):
                    late_calls.setdefault(x, []).append((names[t], v, k))
            c_start, c_tid, c_kind = start[on], tid[on], kind[on]
        if responses:
            j, tid, cat, stop, ms = (np.concatenate(x) for x in zip(*responses))
            for c, key in enumerate(CATEGORY_KEYS):
                self.categories[key].add_many(ms[cat == c])
            start = stop - stop % bucket
            on = start >= closed[j]
            if not on.all():
                for x, t, c, v, w in zip(j[~on].tolist(), tid[~on].tolist(),
                                         cat[~on].tolist(), stop[~on].tolist(),
                                         ms[~on].tolist()):
                    late_responses.setdefault(x, []).append((names[t], CATEGORY_KEYS[c], v, w))
            r_start, r_row, r_ms = start[on], tid[on] * len(CATEGORY_KEYS) + cat[on], ms[on]
        windows.add_bucket_columns(r_start, r_row, r_ms, c_start, c_tid, c_kind)
        for x in set(late_calls) | set(late_responses) | set(latest):
            out[x] = (late_calls.get(x, ()), late_responses.get(x, ()), latest.get(x, ()))
        return out

    def at_boundary(self, rest: tuple | None) -> None:
        """What `add_step` left for a boundary, added just before it closes."""
        if rest is None:
            return
        late_calls, late_responses, latest = rest
        if late_calls or late_responses:
            self.windows.add_outcomes(late_calls, late_responses)   # all late: closed buckets
        last_call = self.last_call
        for trust, ts in latest:
            if ts > last_call.get(trust, -1):
                last_call[trust] = ts

    def on_incomplete(self, reason: str, trust: str | None) -> None:
        pass  # counted by the join; reported in the summary

    def on_dead_letter(self, letter: DeadLetter) -> None:
        self.dead_letters[letter.reason] = self.dead_letters.get(letter.reason, 0) + 1
        self.outputs.dead_letter(letter)

    # -- event-time boundary -----------------------------------------------------------
    def close(self, end: int, pressure: Callable[[], dict],
              rules: bool = True) -> list[WindowRecords]:
        """Close the bucket ending at `end`: window records out (to `outputs.windows` as
        they are, where the outputs take them so), then the rules (unless the caller runs
        them itself: `RuleRun`). Returns the windows' records."""
        groups = self.windows.close_windows(end, pressure)
        take = getattr(self.outputs, "windows", None)
        if take is not None:
            self.stats_records += take(groups)
        else:
            stats = self.outputs.stats
            for w in groups:
                records = w.dicts()
                for rec in records:
                    stats(rec)
                self.stats_records += len(records)
        if rules and self.rules is not None:
            self.rules.evaluate(end, [r for w in groups for r in w.dicts()], pressure,
                                self.last_call, self._emit_alert)
        return groups

    def _emit_alert(self, record: dict) -> None:
        self.alert_records += 1
        self.outputs.alert(record)

    def summary(self) -> dict:
        """The window half of summary.json (CONTRACT §3)."""
        return {
            "dead_letters": sum(self.dead_letters.values()),
            "calls": self.calls,
            "hear_and_treat": self.hear_and_treat,
            "redirected": self.redirected,
            "categories": {c: t.to_dict() for c, t in self.categories.items()},
            "dead_letter_reasons": dict(sorted(self.dead_letters.items())),
        }


def merged_waiting(waiting: list[dict]) -> dict[tuple[str, str], tuple[int, int]]:
    """Several joins' waiting states ((trust, category) -> (calls waiting, earliest clock
    start)) as one: counts add up, the earliest start is kept (keys sorted)."""
    if len(waiting) == 1:
        return dict(sorted(waiting[0].items()))
    acc: dict[tuple[str, str], list[int]] = {}
    for state in waiting:
        for k, (n, s) in state.items():
            a = acc.get(k)
            if a is None:
                acc[k] = [n, s]
            else:
                a[0] += n
                if s < a[1]:
                    a[1] = s
    return {k: (n, s) for k, (n, s) in sorted(acc.items())}


def pressure_at(end: int, waiting: dict) -> dict[tuple[str, str], tuple[int, int]]:
    """Pressure at `end` from a (merged) waiting state: (calls waiting, longest wait ms)."""
    return {k: (n, end - s if end > s else 0) for k, (n, s) in waiting.items()}


def apply_changes(state: dict, changes: Iterable[tuple], whole: bool = False) -> Iterable:
    """Bring a partition's waiting state (as the merge holds it) up to its (key, (calls
    waiting, earliest) or None) changes, in place; `whole`: they are the whole new state
    (reports from before deltas). Returns the keys that changed."""
    if whole:
        changes = dict(changes)
        keys = set(state) | set(changes)
        state.clear()
        state.update(changes)
        return keys
    keys = []
    for k, v in changes:
        keys.append(k)
        if v is None:
            state.pop(k, None)
        else:
            state[k] = v
    return keys


_IDLE_JUMP_MS = 33 * 24 * 3_600_000  # as the Processor: past this much empty time, skip
_WAIT_INDEX = {c: i for i, c in enumerate(WAIT_CATEGORIES)}
_CATEGORY_INDEX = {c: i for i, c in enumerate(CATEGORY_KEYS)}


class RuleRun:
    """What `AlertEvaluator.evaluate` reads at each boundary of a run of closes (the
    records of the windows it reads, the pressure where it reads it, the trusts' latest
    calls), kept to evaluate the whole run at once with `evaluate_batch`: the same alerts
    in the same order, at a fraction of the cost (most boundaries change no alert)."""

    def __init__(self, rules) -> None:
        self.rules = rules
        self.windows = rules.windows_read
        self.every = rules.pressure_every
        self.ends: list[int] = []
        self.pressure: list[tuple | None] = []     # (keys, values) or None: not read
        self.last_call: list[tuple] = []           # (keys, values)
        self.records: list[list[WindowRecords]] = []

    @staticmethod
    def usable(rules) -> bool:
        return rules is not None and hasattr(rules, "evaluate_batch")

    def add(self, end: int, records: list[WindowRecords], waiting: Callable[[], dict],
            last_call: dict[str, int]) -> None:
        """A boundary: its windows' records, the merged waiting state at `end` ((trust, category) ->
        (calls, earliest clock start), as `pressure_at` reads it), the latest calls. The
        two states are kept as (keys, values): `_batch` turns them into columns with one
        code list per distinct key set (keys change far less often than values)."""
        self.ends.append(end)
        if self.every is not None and end % self.every == 0:
            state = waiting()
            self.pressure.append((tuple(state), list(chain.from_iterable(state.values()))))
        else:
            self.pressure.append(None)
        self.last_call.append((tuple(last_call), list(last_call.values())))
        windows = self.windows
        self.records.append([w for w in records if w.name in windows])

    def evaluate(self, emit: Callable[[dict], None]) -> None:
        if not self.ends:
            return
        self.rules.evaluate_batch(self._batch(), emit)

    @staticmethod
    def _flat(states: list, code: Callable[[tuple], list[int]]) -> tuple | None:
        """(keys, values) per boundary (None: not read there) as flat columns: the
        boundary, the code of the key (`code(keys)`, computed once per distinct key set)
        and the values, one row per key (or None when no boundary has any)."""
        codes: dict[tuple, list[int]] = {}
        xs: list[int] = []
        cs: list[int] = []
        values: list[list[int]] = []
        for x, state in enumerate(states):
            if state is None or not state[0]:
                continue
            keys = state[0]
            c = codes.get(keys)
            if c is None:
                c = codes[keys] = code(keys)
            xs.extend([x] * len(keys))
            cs.extend(c)
            values.append(state[1])
        if not xs:
            return None
        flat = np.fromiter(chain.from_iterable(values), np.int64)
        return np.array(xs, np.int64), np.array(cs, np.int64), flat.reshape(len(xs), -1)

    def _batch(self) -> BoundaryBatch:
        names = set(self.last_call[-1][0])     # a trust's latest call is never forgotten
        for keys in {state[0] for state in self.pressure if state is not None}:
            names.update(t for t, _ in keys)
        for groups in self.records:
            for w in groups:
                names.update(w.trusts())
        names.discard(ALL_TRUSTS)
        trusts = tuple(sorted(names))
        nt, m = len(trusts), len(self.ends)
        index = {t: i for i, t in enumerate(trusts)}
        index[ALL_TRUSTS] = nt
        ends = np.array(self.ends, np.int64)
        n_wait = len(WAIT_CATEGORIES)
        waiting = np.zeros((n_wait, nt + 1, m), np.int64)
        longest = np.zeros((n_wait, nt + 1, m), np.int64)
        # a key as category * (nt + 1) + trust; categories the rules do not read: past the end
        flat = self._flat(self.pressure, lambda keys: [
            _WAIT_INDEX.get(c, n_wait) * (nt + 1) + index[t] for t, c in keys])
        if flat is not None:
            at, code, values = flat
            use = code < n_wait * (nt + 1)
            at, code, values = at[use], code[use], values[use]
            ci, ti = np.divmod(code, nt + 1)
            waiting[ci, ti, at] = values[:, 0]
            longest[ci, ti, at] = np.maximum(ends[at] - values[:, 1], 0)
        waiting[:, nt] = waiting[:, :nt].sum(axis=1)
        longest[:, nt] = longest[:, :nt].max(axis=1, initial=0)
        last = np.full((m, nt), -1, np.int64)
        flat = self._flat(self.last_call, lambda keys: [index[t] for t in keys])
        if flat is not None:
            at, code, values = flat
            last[at, code] = values[:, 0]
        return BoundaryBatch(ends, trusts, waiting, longest, last, self._closed(index, nt))

    def _closed(self, index: dict, nt: int) -> dict[str, ClosedWindows]:
        """The figures of each window read, by close: a close is a boundary at which the
        window has records (where `evaluate` sees it), read from the records' arrays as
        the records state them."""
        closes: dict[str, list] = {}
        for x, groups in enumerate(self.records):
            for w in groups:
                closes.setdefault(w.name, []).append((x, w))
        out = {}
        ncat = len(CATEGORY_KEYS)
        responses = [c for c, cat in enumerate(CATEGORY_KEYS) if cat != "C1T"]
        for name, found in closes.items():
            k = len(found)
            agg = np.zeros((k, nt + 1, ncat, 2), np.int64)        # count, sum
            quant = np.zeros((k, nt + 1, ncat, 2))                # [1]: p90
            totals = np.zeros((k, nt + 1, 4), np.int64)
            has = np.zeros((k, nt + 1), bool)
            for j, (_, w) in enumerate(found):
                ids = w.trust_ids
                src = np.append(ids[ids < w.n_span], w.n_span)   # trusts with rows, all
                rows = np.array([index[w.names[t]] for t in src[:-1].tolist()] + [nt],
                                np.int64)
                stat = w.stat.reshape(w.n_span + 1, ncat, -1)[src]
                agg[j, rows, :, 0] = stat[:, :, COUNT]
                agg[j, rows, :, 1] = stat[:, :, SUM]
                quant[j, rows, :, 1] = w.quantiles.reshape(w.n_span + 1, ncat, -1)[src, :, 1]
                tot = w.totals[src]
                totals[j, rows] = tot
                has[j, rows] = (stat[:, responses, COUNT].sum(axis=1) > 0) | tot.any(axis=1)
                has[j, nt] = True                   # the all-trusts totals: always
            mean_s, p90_s = record_figures(agg, quant)
            out[name] = ClosedWindows(np.array([x for x, _ in found], np.int64),
                                      tuple(w.date for _, w in found), agg[..., 0], mean_s,
                                      p90_s, totals, has)
        return out


class _PartitionState:
    """What the merge knows of one input partition."""

    __slots__ = ("seq", "released_through", "first_frontier", "next_slot", "source_max",
                 "queue", "pos", "waiting", "counters", "reported")

    def __init__(self) -> None:
        self.seq = 0
        self.released_through: int | None = None
        self.first_frontier: int | None = None
        self.next_slot: int | None = None
        self.source_max: tuple = ()
        #: reported outcomes not added yet (`OutcomeColumns`), from bucket `pos` of the first
        self.queue: deque[OutcomeColumns] = deque()
        self.pos = 0
        self.waiting: dict = {}
        self.counters: dict = {}
        self.reported = False

    def __setstate__(self, state) -> None:
        self.pos = 0
        restore_slots(self, state)
        if self.queue and type(self.queue[0]) is not OutcomeColumns:
            # a snapshot from before columns: its queue holds `BucketOutcome`s
            self.queue = deque([OutcomeColumns.from_outcomes(list(self.queue)[self.pos:])])
            self.pos = 0


class PartitionMerge:
    """The second level of the live scale-out: adds up every partition's bucket outcomes.

    A bucket closes once every input partition has released it (the watermark is the
    minimum over partitions; the live adapter leaves idle partitions out of that minimum by
    releasing them with the global watermark). Closing then runs exactly the offline
    Processor's boundary: the same `WindowTotals`, so live records equal offline ones."""

    def __init__(self, settings: ProcessingSettings, outputs: Outputs, rules: Rules | None,
                 partitions: int) -> None:
        self.settings = settings
        self.bucket_ms = settings.bucket_ms
        self.lateness_ms = settings.allowed_lateness_ms
        self.totals = WindowTotals(settings, outputs, rules)
        self.parts = [_PartitionState() for _ in range(partitions)]
        self.frontier: int | None = None
        self.last_activity: int | None = None
        #: the partitions' waiting states merged (`merged_waiting`), kept up to date key by
        #: key as outcomes change them; None: to be rebuilt (after a restore)
        self._merged: dict | None = {}
        self._merged_sorted = True
        #: keys some partition's waiting state changed since `_merged` was last brought up
        #: to date: redone once when read (a close), not once per partition's outcome
        self._stale: set = set()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_merged"] = None          # derived: redone from the partitions' states
        state["_stale"] = set()
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._merged = None                # (also for snapshots taken before it existed)
        self._merged_sorted = True
        self._stale = set()

    def _merged_waiting(self) -> dict:
        """Every partition's waiting state merged, in key order."""
        if self._merged is None:
            self._merged = merged_waiting([st.waiting for st in self.parts if st.waiting])
            self._merged_sorted = True
            self._stale.clear()
        elif self._stale:
            self._merge_waiting(self._stale)
            self._stale.clear()
        if not self._merged_sorted:
            self._merged = dict(sorted(self._merged.items()))
            self._merged_sorted = True
        return self._merged

    def _take_waiting(self, st: _PartitionState, changes: list[tuple], whole: bool) -> None:
        """Apply a partition's waiting changes ((key, value or None), in order), keeping
        the merged state up to date from the changes themselves: counts by difference, the
        earliest start when a change comes before it; a key is redone from every partition
        (`_merge_waiting`) only when the call holding its earliest start leaves."""
        merged = self._merged
        stale = self._stale
        if merged is None or whole:
            stale.update(apply_changes(st.waiting, changes, whole))
            return
        state = st.waiting
        for k, v in changes:
            old = state.get(k)
            if v is None:
                state.pop(k, None)
            else:
                state[k] = v
            if k in stale:
                continue                          # redone when read
            m = merged.get(k)
            if m is None:
                if old is None and v is not None:
                    merged[k] = v                 # no partition had it
                    self._merged_sorted = False
                elif old is not None:
                    stale.add(k)
                continue
            n, oldest = m
            if v is not None and v[1] <= oldest:
                oldest = v[1]
            elif old is not None and old[1] == oldest:
                stale.add(k)                      # the earliest may have left
                continue
            merged[k] = (n + (v[0] if v is not None else 0) - (old[0] if old is not None else 0),
                         oldest)

    def _merge_waiting(self, keys: Iterable) -> None:
        """Redo the merged waiting state's `keys` from the partitions'."""
        merged = self._merged
        parts = self.parts
        for k in keys:
            n, oldest = 0, None
            for st in parts:
                v = st.waiting.get(k)
                if v is not None:
                    n += v[0]
                    if oldest is None or v[1] < oldest:
                        oldest = v[1]
            if oldest is None:
                merged.pop(k, None)
            else:
                if k not in merged:
                    self._merged_sorted = False
                merged[k] = (n, oldest)

    @property
    def outputs(self) -> Outputs:
        return self.totals.outputs

    def attach(self, outputs: Outputs) -> None:
        """Point outputs somewhere new (after restoring from a snapshot)."""
        self.totals.outputs = outputs

    # -- input ---------------------------------------------------------------------------
    def take(self, report) -> bool:
        """Apply one `streams.partition.PartitionReport`; False if it was applied before."""
        st = self.parts[report.partition]
        if report.seq <= st.seq:
            return False
        if report.seq != st.seq + 1:
            raise ValueError(f"partition {report.partition}: report {report.seq} after "
                             f"{st.seq}; reports were lost")
        st.seq = report.seq
        st.released_through = report.released_through
        st.first_frontier = report.first_frontier
        st.next_slot = report.next_slot
        st.source_max = report.source_max
        st.counters = report.counters
        st.reported = True
        buckets = report.buckets
        if type(buckets) is not OutcomeColumns:
            buckets = OutcomeColumns.from_outcomes(buckets)    # the reference join's
        if buckets.size:
            st.queue.append(buckets)
        for letter in report.dead_letters:
            self.totals.on_dead_letter(letter)
        return True

    @property
    def global_watermark(self) -> int | None:
        """Highest event time seen on any partition - allowed lateness: the offline
        Processor's watermark; idle partitions are released up to it."""
        top = None
        for st in self.parts:
            for m in st.source_max:
                if m is not None and (top is None or m > top):
                    top = m
        return None if top is None else top - self.lateness_ms

    @property
    def closable_through(self) -> int | None:
        """Every bucket ending at or before this has been released by every partition."""
        low = None
        for st in self.parts:
            if st.released_through is None:
                return None
            if low is None or st.released_through < low:
                low = st.released_through
        return low

    # -- closing -------------------------------------------------------------------------
    def advance(self, limit: int | None = None) -> int:
        """Close every bucket all partitions have released (at most `limit`); returns how
        many closed. A step at a time: which boundary each queued bucket goes with
        (`_boundaries`), the step's outcomes added in bulk (`WindowTotals.add_step`), then
        per boundary its waiting changes, late outcomes and latest calls, and the close."""
        target = self.closable_through
        if target is None:
            return 0
        if self.frontier is None:
            firsts = [st.first_frontier for st in self.parts if st.first_frontier is not None]
            if not firsts:
                return 0
            self.frontier = min(firsts)
        ends, taken = self._boundaries(target, limit)
        if not ends:
            return 0
        totals = self.totals
        parts = self.parts
        segments = []
        changes: list[list] = [[] for _ in ends]     # per boundary: (partition, changes, whole)
        for p, chunk, r0, js in taken:
            b = chunk.buckets[r0:r0 + len(js)]
            at = np.array(js, np.int64)
            c0, c1, s0, s1 = (int(x) for x in (b[0, B_C0], b[-1, B_C1], b[0, B_R0], b[-1, B_R1]))
            segments.append((chunk.trusts, np.repeat(at, b[:, B_C1] - b[:, B_C0]),
                             chunk.calls[c0:c1], np.repeat(at, b[:, B_R1] - b[:, B_R0]),
                             chunk.responses[s0:s1]))
            rows = np.flatnonzero((b[:, B_W1] > b[:, B_W0]) | (b[:, B_WHOLE] != 0))
            if len(rows):
                names = chunk.trusts
                w0 = int(b[rows[0], B_W0])
                found = [((names[t], WAIT_CATEGORIES[c]), (n, e) if n else None)
                         for t, c, n, e in chunk.waiting[w0:int(b[rows[-1], B_W1])].tolist()]
                for i, lo, hi, whole in zip(rows.tolist(), b[rows, B_W0].tolist(),
                                            b[rows, B_W1].tolist(), b[rows, B_WHOLE].tolist()):
                    changes[js[i]].append((p, found[lo - w0:hi - w0], whole != 0))
        rest = totals.add_step(ends, segments)
        run = RuleRun(totals.rules) if RuleRun.usable(totals.rules) else None
        for x, end in enumerate(ends):
            for p, found, whole in changes[x]:
                self._take_waiting(parts[p], found, whole)
            totals.at_boundary(rest[x])
            cache: list = []

            def pressure(end=end, cache=cache) -> dict:
                if not cache:
                    cache.append(pressure_at(end, self._merged_waiting()))
                return cache[0]

            if run is None:
                totals.close(end, pressure)
            else:
                run.add(end, totals.close(end, pressure, rules=False), self._merged_waiting,
                        totals.last_call)
        if run is not None:
            run.evaluate(totals._emit_alert)
        return len(ends)

    def _boundaries(self, target: int, limit: int | None) -> tuple[list[int], list[tuple]]:
        """The boundaries the next step closes (up to `target`, at most `limit`), and the
        queued buckets each one takes: (partition, outcomes, first bucket, the boundary of
        each bucket from there). Moves the frontier and the queues past them."""
        bucket = self.bucket_ms
        parts = self.parts
        ends: list[int] = []
        taken: list[list] = []
        # per partition: queue index, bucket index, its chunk's ends and active flags, and
        # the boundary of each bucket taken from that chunk
        cursors = [[0, st.pos, None, None, None] for st in parts]
        frontier = self.frontier
        while frontier + bucket <= target and (limit is None or len(ends) < limit):
            start = frontier
            end = start + bucket
            x = len(ends)
            active = False
            for p, st in enumerate(parts):
                q = st.queue
                c = cursors[p]
                while c[0] < len(q):
                    if c[2] is None:
                        b = q[c[0]].buckets
                        c[2], c[3], c[4] = b[:, B_END].tolist(), b[:, B_ACTIVE].tolist(), []
                        taken.append([p, q[c[0]], c[1], c[4]])
                    bends, acts, js, i = c[2], c[3], c[4], c[1]
                    while i < len(bends) and bends[i] <= end:
                        active = active or acts[i] == 1
                        js.append(x)
                        i += 1
                    c[1] = i
                    if i < len(bends):
                        break
                    c[0] += 1
                    c[1] = 0
                    c[2] = None
            if active:
                self.last_activity = start
            ends.append(end)
            frontier = end
            if not active and self.last_activity is not None \
                    and frontier - self.last_activity > _IDLE_JUMP_MS:
                upcoming = [(c[2][c[1]] if c[2] is not None else int(st.queue[c[0]].buckets[c[1], B_END]))
                            - bucket for st, c in zip(parts, cursors) if c[0] < len(st.queue)]
                upcoming += [st.next_slot for st in parts if st.next_slot is not None]
                nxt = min(upcoming) if upcoming else target - target % bucket
                if nxt > frontier:
                    frontier = nxt
        self.frontier = frontier
        for st, c in zip(parts, cursors):
            for _ in range(c[0]):
                st.queue.popleft()
            st.pos = c[1]
        return ends, [t for t in taken if t[3]]

    def summary(self) -> dict:
        """Totals so far, in the shape of the offline summary.json (for /health)."""
        counters: dict = {"events": 0, "late_events": 0, "duplicates": 0, "after_final": 0,
                          "c1_without_transport": 0}
        incomplete: dict[str, int] = {}
        for st in self.parts:
            for k in counters:
                counters[k] += st.counters.get(k, 0)
            for k, n in st.counters.get("incomplete", {}).items():
                incomplete[k] = incomplete.get(k, 0) + n
        t = self.totals
        return {"events": counters["events"], **t.summary(),
                "incomplete": dict(sorted(incomplete.items())),
                "duplicates": counters["duplicates"], "after_final": counters["after_final"],
                "c1_without_transport": counters["c1_without_transport"],
                "late_events": counters["late_events"],
                "late_responses": t.windows.late_responses, "too_late": t.windows.too_late,
                "stats_records": t.stats_records, "alerts": t.alert_records,
                "clock": self.settings.clock}
