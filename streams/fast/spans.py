"""Numba kernels for `streams.windows.Span`: a closed span's responses as dense aggregates.

A span (a pane, a window, a calendar day) holds, per (trust, category) row: count, sum ms,
late, zeros, max ms, -min ms, and a histogram of its positive values by sketch position
(`streams.sketch._Mapping`: the bucket a `QuantileSketch` would put the value in). That is
everything a window record needs: sums and extremes are exact, and the centiles are the
sketch's own answers (the bucket of the lower-rank element, clamped to [min, max]), so
windows are sums of their panes' arrays instead of concatenations of every value in them
(a 24 h window re-read a day of responses every hour)."""

from __future__ import annotations

import numpy as np
from numba import njit

from streams.fast.windows import _BLK, _quantiles

_ABS = np.int64(0x7FFFFFFFFFFFFFFF)

# stat columns
COUNT, SUM, LATE, ZEROS = range(4)
# ext columns (combined with max): the largest value, and minus the smallest
HIGH, NEG_LOW = range(2)
EMPTY_EXT = (-1, -(1 << 62))


@njit(cache=True, nogil=True)
def positions(ms, table, bounds, shift):
    """Sketch position of each value ms / 1000 s (-1 for zero), and the lowest and highest
    position among them (lo > hi when none is positive)."""
    n = ms.shape[0]
    out = np.empty(n, np.int64)
    x = np.empty(1, np.float64)
    bits = x.view(np.int64)
    lo = np.int64(1) << 62
    hi = np.int64(-1)
    for i in range(n):
        v = ms[i]
        if v == 0:
            out[i] = -1
            continue
        x[0] = v / 1000.0
        p = np.int64(table[(bits[0] & _ABS) >> shift])
        if x[0] > bounds[p]:
            p += 1
        out[i] = p
        if p < lo:
            lo = p
        if p > hi:
            hi = p
    return out, lo, hi


@njit(cache=True, nogil=True)
def accumulate(rows, ms, pos, base, stat, ext, hist):
    """Add values (row, ms, position) to a span's arrays (hist column = position - base)."""
    for i in range(rows.shape[0]):
        r = rows[i]
        v = ms[i]
        stat[r, COUNT] += 1
        stat[r, SUM] += v
        if v == 0:
            stat[r, ZEROS] += 1
        else:
            hist[r, pos[i] - base] += 1
        if v > ext[r, HIGH]:
            ext[r, HIGH] = v
        if -v > ext[r, NEG_LOW]:
            ext[r, NEG_LOW] = -v


@njit(cache=True, nogil=True)
def span_quantiles(stat, ext, hist, base, qs, reps):
    """Centiles (seconds) of every row with values; NaN for empty rows."""
    nr = stat.shape[0]
    w = hist.shape[1]
    out = np.full((nr, qs.shape[0]), np.nan)
    blk = np.zeros((w >> _BLK) + 2, np.int64)
    for r in range(nr):
        n = stat[r, COUNT]
        if n == 0:
            continue
        h = hist[r]
        blk[:] = 0
        for i in range(w):
            blk[i >> _BLK] += h[i]
        _quantiles(h, blk, 0, w - 1, n, stat[r, ZEROS], -ext[r, NEG_LOW] / 1000.0,
                   ext[r, HIGH] / 1000.0, qs, reps, base, out, r)
    return out
