"""What the alert rules read at every boundary, in columns, and where their state can change.

The reference processor hands the rules a pressure dict and the latest calls at every
bucket boundary; over a replay of months that is ~170k Python calls, most of which change
nothing. Here the columnar engine computes the same figures for a run of boundaries at once
(calls waiting and the longest wait per trust and category, each trust's latest call), and
`next_stops` finds, per alert key, the next point where its value leaves the range in which
`streams.rules.AlertEvaluator` says nothing can change: only there does the evaluator's
state machine run (`AlertEvaluator.evaluate_batch`)."""

from __future__ import annotations

import numpy as np
from numba import njit

from streams.fast.join import OPEN_END
from streams.fast.windows import _round3

#: a time no timer reaches (int64 milliseconds)
NEVER = np.iinfo(np.int64).max


class WaitingSweep:
    """Calls waiting for a crew at each boundary, replayed from the join's waiting intervals
    (key = trust * 4 + category C1..C4, start ms, first boundary open, first boundary closed):
    the same counts and longest waits as `EpisodeJoin.pressure`, boundary after boundary,
    in time linear in intervals plus boundaries (a per-key queue ordered by start)."""

    def __init__(self, IV: np.ndarray, n_keys: int) -> None:
        self.IV = IV                            # in opening order, as the join logs them
        self.n_keys = max(n_keys, 1)
        self.closing, self.base = _closing_order(IV, self.n_keys)
        # per key, the open intervals' (start, closing boundary) by start; closed ones leave
        # once they reach the front
        self.q_start = np.zeros(max(len(IV), 1), np.int64)
        self.q_close = np.zeros(max(len(IV), 1), np.int64)
        self.head = self.base[:-1].copy()
        self.tail = self.base[:-1].copy()
        self.count = np.zeros(self.n_keys, np.int64)
        self.state = np.zeros(2, np.int64)      # next interval by opening, next by closing

    def run(self, ends: np.ndarray, j0: int, j1: int) -> tuple[np.ndarray, np.ndarray]:
        """(calls waiting, longest wait ms), each [category, trust, boundary] (categories C1..C4;
        trust index n_trusts: all trusts, the sum of calls and the longest wait), for
        boundaries j0..j1-1 (in order, each run continuing where the last one stopped)."""
        # rows one cache line longer than the boundaries: the sweep writes a column at a
        # time, and rows of 2**k boundaries would all fall into the same cache sets
        shape = (4, self.n_keys // 4 + 1, j1 - j0 + 8)
        waiting = np.zeros(shape, np.int64)
        longest = np.zeros(shape, np.int64)
        _waiting_sweep(self.IV, self.closing, ends, j0, j1, self.state, self.q_start,
                       self.q_close, self.head, self.tail, self.count, waiting, longest)
        return waiting[:, :, :j1 - j0], longest[:, :, :j1 - j0]


@njit(cache=True, nogil=True)
def _closing_order(IV, n_keys):
    """The intervals by closing boundary (a stable counting sort; still-open ones last), each
    packed as boundary << 32 | key << 1 | 1 if it was ever open; and each key's first slot
    in the per-key queues."""
    n = IV.shape[0]
    top = 0
    base = np.zeros(n_keys + 1, np.int64)
    for i in range(n):
        if top < IV[i, 3] < OPEN_END:
            top = IV[i, 3]
        base[IV[i, 0] + 1] += 1
    for k in range(n_keys):
        base[k + 1] += base[k]
    at = np.zeros(top + 3, np.int64)
    for i in range(n):
        at[min(IV[i, 3], top + 1) + 1] += 1
    for b in range(1, top + 3):
        at[b] += at[b - 1]
    closing = np.empty(n, np.int64)
    for i in range(n):
        b = min(IV[i, 3], top + 1)
        closing[at[b]] = (IV[i, 3] << 32) | (IV[i, 0] << 1) | (1 if IV[i, 2] < IV[i, 3] else 0)
        at[b] += 1
    return closing, base


@njit(cache=True, nogil=True)
def _waiting_sweep(IV, closing, ends, j0, j1, state, q_start, q_close, head, tail, count,
                   waiting, longest):
    niv = IV.shape[0]
    n_keys = count.shape[0]
    every = waiting.shape[1] - 1                 # the all-trusts row
    for j in range(j0, j1):
        while state[0] < niv and IV[state[0], 2] <= j:
            i = state[0]
            state[0] += 1
            close = IV[i, 3]
            if close <= j:
                continue                     # opened and closed before this boundary
            k = IV[i, 0]
            count[k] += 1
            # insert by start time (almost always at the tail)
            p = tail[k]
            s = IV[i, 1]
            while p > head[k] and q_start[p - 1] > s:
                q_start[p] = q_start[p - 1]
                q_close[p] = q_close[p - 1]
                p -= 1
            q_start[p] = s
            q_close[p] = close
            tail[k] += 1
        while state[1] < niv and closing[state[1]] >> 32 <= j:
            c = closing[state[1]]
            state[1] += 1
            if c & 1:
                count[(c >> 1) & 0x7FFFFFFF] -= 1    # it was open at some boundary: counted
        x = j - j0
        end = ends[j]
        for k in range(n_keys):
            if count[k] == 0:
                continue
            h = head[k]
            while q_close[h] <= j:
                h += 1
            head[k] = h
            t = k >> 2
            c = k & 3
            wait = end - q_start[h]
            if wait < 0:
                wait = 0
            waiting[c, t, x] = count[k]
            longest[c, t, x] = wait
            waiting[c, every, x] += count[k]
            if wait > longest[c, every, x]:
                longest[c, every, x] = wait


@njit(cache=True, nogil=True)
def last_calls(changes, j0, j1, latest, out):
    """Each trust's latest call time at boundaries j0..j1-1 (-1 before its first call) from
    the (boundary, trust, time) changes, continuing from `latest` (updated in place)."""
    n = changes.shape[0]
    i = np.searchsorted(changes[:, 0], j0)
    for j in range(j0, j1):
        while i < n and changes[i, 0] <= j:
            latest[changes[i, 1]] = changes[i, 2]
            i += 1
        out[j - j0, :] = latest


@njit(cache=True, nogil=True)
def gap_columns(last, ends, every, rows, which, idx, level, values, scale):
    """A data-gap rule's values ([key, boundary]: seconds since the trust's latest call,
    counted to the latest call of any trust; NaN before its first call or at boundaries not a
    multiple of `every` ms) and level scales (rows[which[x], t], 1 for all trusts), for the
    trusts idx (index last.shape[1]: all trusts, whose gap runs to the boundary itself).
    Returns whether any value is above `level` times its scale (else nothing can fire)."""
    m, nt = last.shape
    passes = False
    for x in range(m):
        latest = -1
        for t in range(nt):
            if last[x, t] > latest:
                latest = last[x, t]
        skip = ends[x] % every != 0
        for k in range(idx.shape[0]):
            t = idx[k]
            if t == nt:
                ts, upto, s = latest, ends[x], 1.0
            else:
                ts, upto, s = last[x, t], latest, rows[which[x], t]
            scale[k, x] = s
            if ts < 0 or skip:
                values[k, x] = np.nan
                continue
            v = (upto - ts) / 1000.0
            values[k, x] = v
            if v > level * s:
                passes = True
    return passes


#: a watch row's `until` when no timer is due, and a run's `since` when none is under way
NEVER = np.inf
NOT_STARTED = -np.inf
#: a watch row: low, high, until, then per level (direction, level, duration, since)
WATCH_HEAD, WATCH_LEVEL = 3, 4
#: a marks row: stop, what to do before it, then per level (broke, began: points; the time
#: it began when the run is still under way at the stop, NO_START: none)
MARK_HEAD, MARK_LEVEL = 2, 3
MARK_REPLAY, MARK_WITHIN = 1, 2
NO_START = np.iinfo(np.int64).min


@njit(cache=True, nogil=True)
def next_stops(values, scale, times, watch, fresh, pos, todo, marks, hits, hit_marks, tails):
    """For each key k = todo[i]: the first point x after pos[k] where something about its
    alerts can change (`streams.rules.AlertEvaluator._watch` says what, in watch[k], which
    fresh[i] replaces first when `fresh` has rows); the number of points when there is none.
    Points without a value (NaN) are not evaluations and are skipped.

    watch[k] = low, high, until, then per level l: direction, level, duration, since. A
    change comes when the value leaves (low * s, high * s] (s = scale[k, x], or 1 when
    `scale` has no rows), when the time reaches until, or when a run of level l (values
    above level * s for direction 1, at or below it for -1) has lasted `duration` ms; a run
    under way at the start began at `since` (-inf: none). Runs that end sooner leave no
    trace (a pending alert dropped, a resolving one firing again), except that the state
    before x must show where the first run broke and where the last one began.

    marks[k] = stop, what to do before it (MARK_REPLAY | MARK_WITHIN, 0: nothing), then
    per level (MARK_LEVEL numbers): the point where its first run broke, the point where its
    last run began when that run is over by x (both to replay before the evaluation at x;
    -1: none), and the time it began when it is still under way at x (a step within x's
    own pass: `AlertEvaluator._apply_trust`'s `began`; NO_START: none).

    Returns (n, r): hits[:n] are the keys that stop (their marks also in hit_marks[:n]),
    tails[:r] those that do not but have runs under way at the end to replay (their runs'
    starts in the second column). pos[k] moves to the stop. `todo` may be a view of `hits`
    (each key is read before its slot is written). Times are ms: int64 `times`, float64 in
    the watch rows (exact below 2**53)."""
    m = values.shape[1]
    n_levels = (watch.shape[1] - WATCH_HEAD) // WATCH_LEVEL
    scaled = scale.shape[0] > 0                 # no rows: every scale is 1
    s = 1.0
    started = np.zeros(n_levels, np.bool_)
    start_t = np.zeros(n_levels, np.float64)
    first = np.zeros(n_levels, np.bool_)        # the run under way is the one at the start
    inside = np.zeros(n_levels, np.bool_)
    dirs = np.zeros(n_levels, np.float64)
    levels = np.zeros(n_levels, np.float64)
    fors = np.zeros(n_levels, np.float64)
    n_hits = 0
    n_tails = 0
    renew = fresh.shape[0] > 0
    for i in range(todo.shape[0]):
        k = todo[i]
        if renew:
            watch[k, :] = fresh[i, :]
        a = watch[k, 0]
        b = watch[k, 1]
        u = watch[k, 2]
        for lv in range(n_levels):
            c = WATCH_HEAD + WATCH_LEVEL * lv
            dirs[lv] = watch[k, c]
            levels[lv] = watch[k, c + 1]
            fors[lv] = watch[k, c + 2]
            start_t[lv] = watch[k, c + 3]
            started[lv] = start_t[lv] != NOT_STARTED
            first[lv] = started[lv]
            c = MARK_HEAD + MARK_LEVEL * lv
            marks[k, c] = -1
            marks[k, c + 1] = -1
            marks[k, c + 2] = NO_START
        # while no run is under way (and levels do not scale), values in (floor, ceil]
        # before `until` change nothing: a tight loop passes over them
        floor = a
        ceil = b
        idle = not scaled
        for lv in range(n_levels):
            if dirs[lv] > 0:
                ceil = min(ceil, levels[lv])
            elif dirs[lv] < 0:
                floor = max(floor, levels[lv])
            if started[lv]:
                idle = False
        v = 0.0
        x = pos[k] + 1
        while x < m:
            if idle:
                while x < m:
                    w = values[k, x]
                    if w == w and (w <= floor or w > ceil or times[x] >= u):
                        break
                    x += 1
                idle = False
                if x >= m:
                    break
            v = values[k, x]
            if v == v:
                if scaled:
                    s = scale[k, x]
                t = times[x]
                if v <= a * s or v > b * s or t >= u:
                    break
                hit = False
                for lv in range(n_levels):
                    d = dirs[lv]
                    if d == 0:
                        continue
                    th = levels[lv] * s
                    inside[lv] = v > th if d > 0 else v <= th
                    if inside[lv] and started[lv] and t - start_t[lv] >= fors[lv]:
                        hit = True
                    elif inside[lv] and not started[lv] and fors[lv] <= 0:
                        hit = True
                if hit:
                    break
                for lv in range(n_levels):
                    if dirs[lv] == 0:
                        continue
                    if inside[lv]:
                        if not started[lv]:
                            started[lv] = True
                            start_t[lv] = t
                            first[lv] = False
                            marks[k, MARK_HEAD + MARK_LEVEL * lv + 1] = x
                    elif started[lv]:
                        if first[lv]:
                            marks[k, MARK_HEAD + MARK_LEVEL * lv] = x
                            first[lv] = False
                        started[lv] = False
                        marks[k, MARK_HEAD + MARK_LEVEL * lv + 1] = -1
                if not scaled:
                    idle = True
                    for lv in range(n_levels):
                        if started[lv]:
                            idle = False
            x += 1
        marks[k, 0] = x
        todo_before = 0
        for lv in range(n_levels):
            c = MARK_HEAD + MARK_LEVEL * lv
            if marks[k, c + 1] >= 0 and x < m:
                # the value at the stop decides whether the run is still under way
                th = levels[lv] * s
                if (v > th) if dirs[lv] > 0 else (v <= th):
                    marks[k, c + 2] = times[marks[k, c + 1]]
                    marks[k, c + 1] = -1
                    todo_before |= MARK_WITHIN
            if marks[k, c] >= 0 or marks[k, c + 1] >= 0:
                todo_before |= MARK_REPLAY
        marks[k, 1] = todo_before
        again = todo_before & MARK_REPLAY
        if x < m:
            hits[n_hits] = k
            hit_marks[n_hits, :] = marks[k, :]
            n_hits += 1
            pos[k] = x
        elif again:
            tails[n_tails] = k
            n_tails += 1
    return n_hits, n_tails


def record_figures(agg: np.ndarray, quant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`mean_s` and `p90_s` as window records state them (`window_figures`), the figures
    too large for the kernel rounded by Python."""
    mean_s = np.empty(agg.shape[:-1])
    p90_s = np.empty(agg.shape[:-1])
    if window_figures(agg, quant, mean_s, p90_s):
        for at in zip(*np.nonzero(mean_s == -np.inf)):
            n, total = int(agg[at][0]), int(agg[at][1])
            mean_s[at] = round(total / n / 1000.0, 3)
            p90_s[at] = round(float(quant[at][1]), 3)
    return mean_s, p90_s


@njit(cache=True, nogil=True)
def window_figures(kagg, kquant, mean_s, p90_s):
    """The `mean_s` and `p90_s` of captured window aggregates ([close, trust, category]) as
    the records hold them (Python's round(x, 3)); NaN without responses. Returns how many
    are too large for the kernel's rounding: those are left -inf for Python to round."""
    scratch = np.zeros(1, np.float64)
    big = 0
    for s in range(kagg.shape[0]):
        for t in range(kagg.shape[1]):
            for c in range(kagg.shape[2]):
                n = kagg[s, t, c, 0]
                if n == 0:
                    mean_s[s, t, c] = np.nan
                    p90_s[s, t, c] = np.nan
                    continue
                d = _round3(kagg[s, t, c, 1] / n / 1000.0, scratch)
                e = _round3(kquant[s, t, c, 1], scratch)
                if d < 0 or e < 0:
                    big += 1
                    mean_s[s, t, c] = -np.inf
                    p90_s[s, t, c] = -np.inf
                    continue
                mean_s[s, t, c] = d / 1000.0
                p90_s[s, t, c] = e / 1000.0
    return big
