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
        shape = (j1 - j0, 4, self.n_keys // 4 + 1)      # written boundary by boundary
        waiting = np.zeros(shape, np.int64)
        longest = np.zeros(shape, np.int64)
        _waiting_sweep(self.IV, self.closing, ends, j0, j1, self.state, self.q_start,
                       self.q_close, self.head, self.tail, self.count, waiting, longest)
        return (np.ascontiguousarray(waiting.transpose(1, 2, 0)),
                np.ascontiguousarray(longest.transpose(1, 2, 0)))


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
    every = waiting.shape[2] - 1                 # the all-trusts column
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
            waiting[x, c, t] = count[k]
            longest[x, c, t] = wait
            waiting[x, c, every] += count[k]
            if wait > longest[x, c, every]:
                longest[x, c, every] = wait


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


#: `run_since` of a run not under way
NOT_STARTED = np.iinfo(np.int64).min


@njit(cache=True, nogil=True)
def next_stops(values, scale, times, low, high, until, run_dir, run_level, run_for, run_since,
               pos, todo, stop, broke, began, replay, hits, tails):
    """For each key k in `todo`: the first point x after pos[k] where something about its
    alerts can change (`streams.rules.AlertEvaluator._watch` says what); the number of
    points when there is none. Points without a value (NaN) are not evaluations and skipped.

    A change comes when the value leaves (low[k] * s, high[k] * s] (s = scale[k, x]), when
    the time reaches until[k], or when a run of level l (values above run_level[k, l] * s
    for run_dir 1, at or below it for -1) has lasted run_for[k, l] ms; a run under way at
    the start began at run_since[k, l]. Runs that end sooner leave no trace (a pending alert
    dropped, a resolving one firing again), except that the state before x must show where
    the first run broke and where the last one began: broke[k, l] and began[k, l] (points,
    -1 for none) are where to replay the level before evaluating x (replay[k] says whether
    there is any). Returns (n, r): hits[:n] are the keys that stop, tails[:r] those that
    do not but have runs under way at the end to replay. pos[k] moves to the stop."""
    m = values.shape[1]
    n_levels = run_dir.shape[1]
    started = np.zeros(n_levels, np.bool_)
    start_t = np.zeros(n_levels, np.int64)
    first = np.zeros(n_levels, np.bool_)        # the run under way is the one at the start
    inside = np.zeros(n_levels, np.bool_)
    dirs = np.zeros(n_levels, np.int64)
    levels = np.zeros(n_levels, np.float64)
    fors = np.zeros(n_levels, np.int64)
    n_hits = 0
    n_tails = 0
    for i in range(todo.shape[0]):
        k = todo[i]
        a = low[k]
        b = high[k]
        u = until[k]
        for lv in range(n_levels):
            dirs[lv] = run_dir[k, lv]
            levels[lv] = run_level[k, lv]
            fors[lv] = run_for[k, lv]
            started[lv] = run_since[k, lv] != NOT_STARTED
            start_t[lv] = run_since[k, lv]
            first[lv] = started[lv]
            broke[k, lv] = -1
            began[k, lv] = -1
        x = pos[k] + 1
        while x < m:
            v = values[k, x]
            if v == v:
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
                            began[k, lv] = x
                    elif started[lv]:
                        if first[lv]:
                            broke[k, lv] = x
                            first[lv] = False
                        started[lv] = False
                        began[k, lv] = -1
            x += 1
        stop[k] = x
        again = False
        for lv in range(n_levels):
            if broke[k, lv] >= 0 or began[k, lv] >= 0:
                again = True
        replay[k] = again
        if x < m:
            hits[n_hits] = k
            n_hits += 1
            pos[k] = x
        elif again:
            tails[n_tails] = k
            n_tails += 1
    return n_hits, n_tails


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
