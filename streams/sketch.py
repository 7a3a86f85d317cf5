"""Mergeable quantile sketch with a guaranteed relative error (DDSketch family), Numba kernels.

``QuantileSketch(relative_accuracy=0.01)`` summarises non-negative values (response times in
seconds) so that every quantile can be answered to within ``relative_accuracy`` of the exact
answer, sketches merge losslessly, and the result never depends on the arrival order.

Guarantees (documented bounds)
------------------------------
* **Rank convention**: ``quantile(q)`` estimates the element at sorted index
  ``floor(q * (count - 1))`` (computed in float64 exactly as numpy does), i.e.
  ``numpy.quantile(values, q, method="lower")``.  For every ``q`` in ``[0, 1]``,
  ``abs(quantile(q) - exact) <= relative_accuracy * exact``.  A rank that lands on the
  smallest or the largest element returns the exact ``min`` / ``max`` (so ``q=0``,
  ``q=1`` and constant input are exact), zeros are counted exactly and come back as
  ``0.0``, and every estimate is clamped into ``[min, max]``.
* **Supported range**: the guarantee holds for every positive normal double,
  ``2.2250738585072014e-308 <= x <= 1.7976931348623157e308`` (response times of 1 ms to
  days are deep inside it), as long as the occupied buckets span at most ``max_buckets``
  buckets (see memory).  Positive subnormal values (< 2.2e-308) are bucketed with the
  smallest normal double (their own min is still exact).  ``-0.0`` counts as a zero.
  Negative, NaN and infinite values raise ``ValueError``.
* **Memory**: ``(max_buckets + 9) * 8`` bytes of state (default 2,048 buckets at 1 %, i.e.
  16.1 KiB) plus a per-value ``add`` buffer of at most 4 KiB (512 doubles) plus ~300 bytes
  of Python object, whatever the number of values.  The mapping tables (1.7 MB at 1 %,
  15.5 MB at 0.1 %) are built once per accuracy (50 ms at 1 %) and shared by all sketches.
  Bucket ``i`` covers ``(b[i-1], b[i]]`` with ``b[i] = exp(i * ln(gamma))``,
  ``gamma = (1+a')/(1-a')``, ``a' = a*(1-1e-7)``: 116 buckets per decade at 1 %.  The
  default ``max_buckets`` (2,048 at 1 % and coarser, ``ceil(40/ln(gamma))`` rounded up to a
  multiple of 64 for finer accuracies, e.g. 20,032 at 0.1 %) covers a ratio max/min of
  at least e**40 ~ 2.4e17 (6e17 at 1 %: e.g. 1e-9 s .. 6e8 s) without collapsing anything;
  1e-3 s .. 1e7 s needs 1,152 buckets at 1 %.  Past ``max_buckets`` the **lowest** buckets
  are collapsed into the lowest kept bucket (DDSketch's collapsing store): the kept window
  is always the ``max_buckets`` buckets ending at the bucket of ``max``, so the collapsed
  state depends only on the multiset of values (merges stay exact and order-independent).
  Quantiles whose rank falls in a non-collapsed bucket keep the guarantee; only ranks among
  values ~1e17 times smaller than ``max`` lose it -- never p50 and above on realistic data.
* **Relative accuracy**: ``relative_accuracy`` in ``[0.001, 0.5]`` (the lookup tables grow as
  1/a).
* **Exact merge / determinism**: the bucket of a value is a pure function of the value (a
  table lookup on its float bits plus one comparison against a precomputed boundary, the
  same code for ``add``, ``add_many`` and ``merge``), so the sketch of A+B equals
  ``merge(sketch(A), sketch(B))`` bucket for bucket, in any order and any batching.
  ``count``, zero count, ``min``, ``max`` and the buckets are exact integers/values;
  ``sum`` (hence ``mean``) is a float64 sum and is exact only up to floating-point
  rounding (its value can differ in the last bits between arrival orders), so ``__eq__``
  compares ``sum`` with ``math.isclose(rel_tol=1e-9)`` and everything else exactly.
* **Empty sketch**: ``quantile``, ``min``, ``max`` and ``mean`` return ``nan``.

Performance notes
-----------------
``add_many`` makes one call to a Numba kernel (``cache=True``) that validates the whole
batch first (nothing is changed when a value is rejected; the message names the first bad
index) and then inserts it.  ``add(x)`` validates in Python and appends to a small float64
buffer that is flushed through the same kernel (every reader flushes first).  Importing this
module compiles nothing; the first call of each kernel in a fresh process loads it from
Numba's on-disk cache (or compiles it on the very first use): measured on the 2-core
benchmark machine, the first ``add_many`` + ``merge`` cost 2.2 s with an empty cache and
0.19 s with a warm one (benchmarks/README.md).  ``warm_up()`` pays that cost up front.  A
read-only input array is a separate Numba specialization (compiled once, also cached).

Wire format (``to_bytes``, version 1, little endian)::

    b"CSQS" | u8 version=1 | f64 relative_accuracy | varint max_buckets | varint count
    [count > 0:  varint zero_count | f64 min | f64 max | f64 sum
      [count > zero_count:  zigzag-varint lowest key | varint span | span bucket entries]]
    | u32 crc32 of everything before

Bucket entries: a varint count > 0 is one bucket; a 0 is followed by a varint run length
of empty buckets.  ``from_bytes`` checks the CRC, every length, value and invariant, and
raises ``ValueError`` for anything malformed.
"""

from __future__ import annotations

import array
import math
import struct
import zlib
from bisect import bisect_right

import numpy as np
from numba import njit

__all__ = ["QuantileSketch", "segment_quantiles", "warm_up", "MIN_RELATIVE_ACCURACY",
           "MAX_RELATIVE_ACCURACY"]

MIN_RELATIVE_ACCURACY = 1e-3
MAX_RELATIVE_ACCURACY = 0.5
DEFAULT_MAX_BUCKETS = 2048
_DEFAULT_SPAN = 40.0  # natural-log span covered without collapsing by the default store
MIN_MAX_BUCKETS = 16
MAX_MAX_BUCKETS = 1 << 20
_ACCURACY_MARGIN = 1e-7  # gamma is built for a*(1-margin): absorbs float rounding of bounds
_ADD_BUFFER = 512  # values buffered by add() before they go through the batch kernel

_MAGIC = b"CSQS"
_VERSION = 1
_DBL_MIN = 2.2250738585072014e-308
_DBL_MAX = 1.7976931348623157e308
_INF = math.inf

# One int64 state vector per sketch (a single array keeps Numba's call overhead low):
# [offset, lo, hi, zero_count, count, max_buckets, min, max, sum, counts[max_buckets]...]
# lo/hi: table positions of the lowest/highest occupied bucket (valid when count > zero);
# counts[p - offset] is the count of bucket p; min/max/sum are float64 bit patterns.
_OFF, _LO, _HI, _ZERO, _COUNT, _M = range(6)
_NST = 9
# float64 view of state[6:9]
_MIN, _MAX, _SUM = range(3)


# --------------------------------------------------------------------------------------
# Mapping: value -> bucket key, shared tables per relative accuracy
# --------------------------------------------------------------------------------------


class _Mapping:
    """Bucket boundaries b[p] (p = table position = key - base), representatives and the
    float-bits lookup table for one relative accuracy.

    key(x) = the smallest p with x <= b[p]  (x > 0), computed as
    ``p = T[bits(x) >> shift]; p += x > b[p]``: each T entry covers a slice of doubles whose
    max/min ratio (1 + 2**-mant_bits) is below gamma, so it contains at most one boundary.
    """

    __slots__ = ("a", "gamma", "log_gamma", "base", "bounds", "reps", "table", "shift",
                 "mant_bits", "pz", "pt", "max_error", "bounds_mv", "table_mv")

    def __init__(self, a: float):
        self.a = a
        ai = a * (1.0 - _ACCURACY_MARGIN)
        self.gamma = gamma = (1.0 + ai) / (1.0 - ai)
        self.log_gamma = lg = math.log(gamma)
        lo_key = math.floor(math.log(_DBL_MIN) / lg) - 2
        hi_key = math.ceil(math.log(_DBL_MAX) / lg) + 2
        self.base = lo_key
        # boundaries with Python's math.exp (the reference in the tests uses the same
        # definition); overflow -> inf for the top one(s)
        exp = math.exp
        bounds = []
        for i in range(lo_key, hi_key + 1):
            try:
                bounds.append(exp(i * lg))
            except OverflowError:
                bounds.append(_INF)
        b = np.array(bounds, dtype=np.float64)
        self.bounds = b
        self.pz = pz = int(np.searchsorted(b, _DBL_MIN, side="left"))
        self.pt = pt = int(np.searchsorted(b, _DBL_MAX, side="left"))
        if not (1 <= pz < pt < len(b)) or not np.all(np.diff(b[pz - 1:pt + 1]) > 0):
            raise RuntimeError("sketch mapping: bad boundary table")  # pragma: no cover
        # representatives: value with equal relative error to both ends of (b[p-1], b[p]]
        lo = b[:-1]
        hi = b[1:]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            r = hi / lo
            reps = lo * (2.0 * r / (1.0 + r))
            top = np.isinf(hi)
            reps[top] = np.minimum(lo[top] * (2.0 * gamma / (1.0 + gamma)), _DBL_MAX)
            err = (r - 1.0) / (r + 1.0)
        self.reps = np.concatenate(([0.0], reps))  # reps[p] for bucket p
        self.reps[:pz] = 0.0
        finite = np.arange(1, len(b)) > pz  # buckets above pz have a normal lower bound
        finite &= ~top
        self.max_error = float(err[finite[: len(err)]].max())
        if not self.max_error <= a:
            raise RuntimeError("sketch mapping: accuracy not met")  # pragma: no cover
        # float-bits lookup table
        mb = max(0, math.ceil(-math.log2(gamma - 1.0)))
        while True:
            shift = 52 - mb
            j = np.arange(2048 << mb, dtype=np.int64)
            starts = (j << shift).view(np.float64)  # lower end of each slice
            t = np.searchsorted(b, starts, side="left").astype(np.int64)
            t[: 1 << mb] = pz  # zero and subnormals -> bucket of the smallest normal
            t[2047 << mb:] = pt  # inf/nan: never used (rejected before insertion)
            normal = slice(1 << mb, 2047 << mb)
            nxt = np.empty_like(starts)
            nxt[:-1] = starts[1:]
            nxt[-1] = _INF
            ok = b[np.minimum(t[normal] + 1, len(b) - 1)] >= nxt[normal]
            if bool(np.all(ok)):
                break
            mb += 1  # pragma: no cover
        self.mant_bits = mb
        self.shift = shift
        self.table = t.astype(np.int32)
        # memoryviews give fast scalar indexing from Python
        self.bounds_mv = memoryview(self.bounds)
        self.table_mv = memoryview(self.table)

    def key(self, x: float) -> int:
        """Table position of the bucket of x >= 0 (pure Python, same result as the kernels)."""
        bits = struct.unpack("<q", struct.pack("<d", x))[0] & 0x7FFFFFFFFFFFFFFF
        p = self.table_mv[bits >> self.shift]
        if x > self.bounds_mv[p]:
            p += 1
        return p


_MAPPINGS: dict[float, _Mapping] = {}


def _default_max_buckets(a: float) -> int:
    """2,048 at 1 % (and coarser); finer accuracies get as many buckets as it takes to cover
    the same ratio max/min (>= e**40 ~ 2.4e17) without collapsing (rounded up to a multiple of 64)."""
    ai = a * (1.0 - _ACCURACY_MARGIN)
    need = math.ceil(_DEFAULT_SPAN / math.log((1.0 + ai) / (1.0 - ai)))
    return max(DEFAULT_MAX_BUCKETS, -(-need // 64) * 64)


def _mapping(a: float) -> _Mapping:
    m = _MAPPINGS.get(a)
    if m is None:
        m = _MAPPINGS[a] = _Mapping(a)
    return m


# --------------------------------------------------------------------------------------
# Numba kernels (compiled lazily on first call, cached on disk)
# --------------------------------------------------------------------------------------

_ABS = np.int64(0x7FFFFFFFFFFFFFFF)
_EXP = np.int64(0x7FF0000000000000)
_IMAX = np.int64(0x7FFFFFFFFFFFFFFF)


@njit(cache=True, nogil=True)
def _k_prepare(st, kmin, kmax):
    """Make the window hold keys [kmin, kmax] plus what is already stored; collapse keys
    below (new max key - M + 1).  Returns (lo, hi) clamp bounds for the new keys."""
    counts = st[9:]
    m = st[5]
    has = st[4] > st[3]
    if has:
        hi = max(st[2], kmax)
        lo0 = min(st[1], kmin)
    else:
        hi = kmax
        lo0 = kmin
    floor = hi - m + 1
    lo = max(lo0, floor)
    off = st[0]
    if (not has) or lo < off or hi > off + m - 1:
        # recenter the window on [lo, hi]; move stored buckets (collapsing below floor)
        new_off = lo - (m - (hi - lo + 1)) // 2
        if has:
            olo = st[1]
            ohi = st[2]
            tmp = counts[olo - off: ohi - off + 1].copy()
            counts[olo - off: ohi - off + 1] = 0
            for p in range(olo, ohi + 1):
                c = tmp[p - olo]
                if c != 0:
                    q = p if p > floor else floor
                    counts[q - new_off] += c
        st[0] = new_off
    elif has and floor > st[1]:
        # window still fits; collapse buckets below floor into floor
        acc = 0
        for p in range(st[1], floor):
            acc += counts[p - off]
            counts[p - off] = 0
        counts[floor - off] += acc
    st[1] = lo
    st[2] = hi
    return lo, hi


@njit(cache=True, nogil=True)
def _k_add(vals, table, bounds, shift, st):
    """Validate the whole batch, then insert it.  Returns -1, or the index of the first
    negative/NaN/infinite value (in which case nothing was changed)."""
    n = vals.shape[0]
    if n == 0:
        return -1
    bits = vals.view(np.int64)
    # pass 1 (integer only, vectorizes): validity, zeros, min/max via the float bits
    nbad = 0
    nz = 0
    mx = np.int64(0)
    mn = _IMAX
    mnpos = _IMAX
    for i in range(n):
        b = bits[i]
        a = b & _ABS
        nbad += (a >= _EXP) | ((b < 0) & (a != 0))
        nz += a == 0
        mx = max(mx, a)
        mn = min(mn, a)
        mnpos = min(mnpos, a if a != 0 else _IMAX)
    if nbad:
        for i in range(n):
            b = bits[i]
            a = b & _ABS
            if (a >= _EXP) or ((b < 0) and (a != 0)):
                return i
    fst = st[6:9].view(np.float64)
    tmp = np.empty(3, np.int64)
    tmp[0] = mn
    tmp[1] = mx
    tmp[2] = mnpos
    tf = tmp.view(np.float64)
    vmin = tf[0]
    vmax = tf[1]
    npos = n - nz
    s0 = 0.0
    s1 = 0.0
    if npos > 0:
        vminpos = tf[2]
        kmin = table[mnpos >> shift]
        if vminpos > bounds[kmin]:
            kmin += 1
        kmax = table[mx >> shift]
        if vmax > bounds[kmax]:
            kmax += 1
        lo, hi = _k_prepare(st, np.int64(kmin), np.int64(kmax))
        counts = st[9:]
        off = st[0]
        # pass 2: insert (zeros land in the `lo` bucket and are taken out afterwards)
        half = n // 2
        for i in range(half):
            i0 = 2 * i
            v0 = vals[i0]
            p0 = np.int64(table[(bits[i0] & _ABS) >> shift])
            p0 += v0 > bounds[p0]
            p0 = min(max(p0, lo), hi)
            counts[p0 - off] += 1
            s0 += v0
            v1 = vals[i0 + 1]
            p1 = np.int64(table[(bits[i0 + 1] & _ABS) >> shift])
            p1 += v1 > bounds[p1]
            p1 = min(max(p1, lo), hi)
            counts[p1 - off] += 1
            s1 += v1
        if n & 1:
            v0 = vals[n - 1]
            p0 = np.int64(table[(bits[n - 1] & _ABS) >> shift])
            p0 += v0 > bounds[p0]
            p0 = min(max(p0, lo), hi)
            counts[p0 - off] += 1
            s0 += v0
        counts[lo - off] -= nz
    st[3] += nz
    st[4] += n
    if vmin < fst[0]:
        fst[0] = vmin
    if vmax > fst[1]:
        fst[1] = vmax
    fst[2] += s0 + s1
    return -1


@njit(cache=True, nogil=True)
def _k_merge(st, ost):
    """self += other, exactly (same mapping and max_buckets checked by the caller)."""
    if ost[4] == 0:
        return
    if ost[4] > ost[3]:
        olo = ost[1]
        ohi = ost[2]
        ooff = ost[0]
        ocounts = ost[9:]
        lo, hi = _k_prepare(st, olo, ohi)
        counts = st[9:]
        off = st[0]
        if olo >= lo:
            a = counts[olo - off: ohi - off + 1]
            b = ocounts[olo - ooff: ohi - ooff + 1]
            for i in range(ohi - olo + 1):
                a[i] += b[i]
        else:
            acc = 0
            for p in range(olo, ohi + 1):
                c = ocounts[p - ooff]
                if p < lo:
                    acc += c
                else:
                    counts[p - off] += c
            counts[lo - off] += acc
    st[3] += ost[3]
    st[4] += ost[4]
    fst = st[6:9].view(np.float64)
    ofst = ost[6:9].view(np.float64)
    if ofst[0] < fst[0]:
        fst[0] = ofst[0]
    if ofst[1] > fst[1]:
        fst[1] = ofst[1]
    fst[2] += ofst[2]


@njit(cache=True, nogil=True)
def _k_segment_quantiles(vals, offsets, qs, table, bounds, shift, reps, out):
    # order statistics by selection (np.partition, each on what is right of the last one),
    # not a full sort: a 24 h window's segment holds tens of thousands of values
    nseg = offsets.shape[0] - 1
    order = np.argsort(qs)
    bits1 = np.empty(1, np.float64)
    bits1i = bits1.view(np.int64)
    for s in range(nseg):
        a = offsets[s]
        n = offsets[s + 1] - a
        if n == 0:
            for j in range(qs.shape[0]):
                out[s, j] = np.nan
            continue
        work = vals[a:a + n].copy()
        mn = work[0]
        mx = work[0]
        for i in range(1, n):
            v = work[i]
            if v < mn:
                mn = v
            elif v > mx:
                mx = v
        lo = 0                        # work[lo:] is not yet ordered around a found rank
        last_k = -1
        for jj in range(order.shape[0]):
            j = order[jj]
            k = np.int64(np.floor((n - 1) * qs[j]))
            if k <= 0:
                out[s, j] = mn
                continue
            if k >= n - 1:
                out[s, j] = mx
                continue
            if k != last_k:
                work[lo:] = np.partition(work[lo:], k - lo)
                lo = k + 1
                last_k = k
            x = work[k]
            if x == 0.0:
                out[s, j] = 0.0
            else:
                bits1[0] = x
                bits = bits1i[0] & _ABS
                p = np.int64(table[bits >> shift])
                if x > bounds[p]:
                    p += 1
                v = reps[p]
                out[s, j] = mn if v < mn else (mx if v > mx else v)


def segment_quantiles(values: np.ndarray, offsets: np.ndarray, qs,
                      relative_accuracy: float = 0.01) -> np.ndarray:
    """Quantiles of many value segments in one kernel call: row i answers exactly what
    ``QuantileSketch(relative_accuracy)`` built from ``values[offsets[i]:offsets[i+1]]`` would
    (same buckets, same representatives, same rank rule), without building the sketches.

    For batch queries such as every window closing at one watermark step. Values must be
    finite and >= 0 (not re-validated here) and span less than the default store (no collapse:
    a max/min ratio below ~6e17 at 1 %)."""
    m = _mapping(float(relative_accuracy))
    q = np.ascontiguousarray(qs, dtype=np.float64)
    vals = np.ascontiguousarray(values, dtype=np.float64)
    off = np.ascontiguousarray(offsets, dtype=np.int64)
    out = np.empty((max(len(off) - 1, 0), len(q)), dtype=np.float64)
    if len(out):
        _k_segment_quantiles(vals, off, q, m.table, m.bounds, np.int64(m.shift), m.reps, out)
    return out


def warm_up() -> None:
    """Load (or compile) every kernel now instead of on first use."""
    s = QuantileSketch()
    s.add_many(np.array([0.0, 1.0, 2.0]))
    t = QuantileSketch()
    t.add_many(np.array([3.0]))
    s.merge(t)


# --------------------------------------------------------------------------------------
# varints
# --------------------------------------------------------------------------------------


def _put_varint(out: bytearray, v: int) -> None:
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def _zigzag(v: int) -> int:
    return (v << 1) if v >= 0 else ((-v << 1) - 1)


def _unzigzag(v: int) -> int:
    return (v >> 1) if not (v & 1) else -((v + 1) >> 1)


class _Reader:
    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, end: int):
        self.data = data
        self.pos = 0
        self.end = end

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > self.end:
            raise ValueError(f"QuantileSketch.from_bytes: truncated data (reading {what})")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def f64(self, what: str) -> float:
        return struct.unpack("<d", self.take(8, what))[0]

    def varint(self, what: str) -> int:
        data = self.data
        pos = self.pos
        end = self.end
        result = 0
        shift = 0
        while True:
            if pos >= end:
                raise ValueError(f"QuantileSketch.from_bytes: truncated data (reading {what})")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 63:
                raise ValueError(f"QuantileSketch.from_bytes: varint too long ({what})")
        self.pos = pos
        if result >= 1 << 63:
            raise ValueError(f"QuantileSketch.from_bytes: {what} out of range")
        return result


# --------------------------------------------------------------------------------------
# The sketch
# --------------------------------------------------------------------------------------


def _bad_value_message(x, index=None) -> str:
    where = "" if index is None else f" at index {index}"
    return (f"QuantileSketch: invalid value {x!r}{where}: values must be finite and >= 0 "
            "(negative, NaN and infinite values are rejected)")


class QuantileSketch:
    """Mergeable relative-error quantile sketch (see the module docstring for the bounds).

    >>> s = QuantileSketch(relative_accuracy=0.01)
    >>> s.add_many(np.array([1.0, 2.0, 3.0, 4.0]))
    >>> abs(s.quantile(0.5) - 2.0) <= 0.01 * 2.0   # numpy "lower": sorted index floor(0.5*3)
    True
    """

    __slots__ = ("_map", "_mb", "_st", "_counts", "_fst", "_buf", "_cache", "__weakref__")

    def __init__(self, relative_accuracy: float = 0.01, *, max_buckets: int | None = None):
        try:
            a = float(relative_accuracy)
        except (TypeError, ValueError):
            raise ValueError(f"QuantileSketch: relative_accuracy must be a number, "
                             f"got {relative_accuracy!r}") from None
        if not (MIN_RELATIVE_ACCURACY <= a <= MAX_RELATIVE_ACCURACY):
            raise ValueError(f"QuantileSketch: relative_accuracy must be in "
                             f"[{MIN_RELATIVE_ACCURACY}, {MAX_RELATIVE_ACCURACY}], got {a!r}")
        if max_buckets is None:
            max_buckets = _default_max_buckets(a)
        if (isinstance(max_buckets, bool) or not isinstance(max_buckets, (int, np.integer))
                or not MIN_MAX_BUCKETS <= max_buckets <= MAX_MAX_BUCKETS):
            raise ValueError(f"QuantileSketch: max_buckets must be an integer in "
                             f"[{MIN_MAX_BUCKETS}, {MAX_MAX_BUCKETS}], got {max_buckets!r}")
        self._map = _mapping(a)
        self._mb = mb = int(max_buckets)
        st = np.zeros(_NST + mb, dtype=np.int64)
        st[_M] = mb
        self._set_state(st)
        self._fst[:] = (_INF, -_INF, 0.0)
        self._buf = array.array("d")
        self._cache = None

    def _set_state(self, st: np.ndarray) -> None:
        self._st = st
        self._counts = st[_NST:]
        self._fst = st[6:9].view(np.float64)

    # ---- insertion ---------------------------------------------------------------------

    def add(self, x) -> None:
        """Add one value (seconds).  Raises ValueError for negative, NaN or infinite x
        (TypeError for non-numbers).  Values are validated here and buffered; the buffer
        goes through the batch kernel when full or before anything reads the sketch."""
        if not 0.0 <= x < _INF:  # also False for NaN; TypeError for str/None
            raise ValueError(_bad_value_message(x))
        buf = self._buf
        try:
            buf.append(x)  # TypeError for non-numbers
        except OverflowError:  # an int too large for a double
            raise ValueError(_bad_value_message(x)) from None
        if len(buf) >= _ADD_BUFFER:
            self._flush()

    def add_many(self, values) -> None:
        """Add a batch (float64 array or any sequence of numbers) in one kernel call.

        The whole batch is validated first: if any value is negative, NaN or infinite a
        ValueError naming the first bad index is raised and the sketch is unchanged."""
        if type(values) is not np.ndarray or values.dtype != np.float64 or values.ndim != 1 \
                or not values.flags.c_contiguous:
            values = self._as_array(values)
        if self._buf:
            self._flush()
        m = self._map
        bad = _k_add(values, m.table, m.bounds, m.shift, self._st)
        if bad >= 0:
            raise ValueError(_bad_value_message(float(values[bad]), int(bad)))
        self._cache = None

    @staticmethod
    def _as_array(values) -> np.ndarray:
        if isinstance(values, (str, bytes, bytearray)):
            raise TypeError("QuantileSketch.add_many: expected an array or a sequence of numbers")
        arr = np.asarray(values)
        if arr.dtype.kind not in "fiub":
            if arr.dtype.kind == "O":
                try:
                    arr = arr.astype(np.float64)
                except OverflowError:
                    arr = np.array([QuantileSketch._coerce_obj(v) for v in arr.ravel()])
                except (TypeError, ValueError) as e:
                    raise TypeError(f"QuantileSketch.add_many: values must be real numbers "
                                    f"({e})") from None
            else:
                raise TypeError(f"QuantileSketch.add_many: values must be real numbers, "
                                f"got dtype {arr.dtype}")
        return np.ascontiguousarray(arr, dtype=np.float64).reshape(-1)

    @staticmethod
    def _coerce_obj(v) -> float:
        try:
            return float(v)
        except OverflowError:
            return _INF  # rejected (with its index) by the kernel

    def _flush(self) -> None:
        buf = self._buf
        if buf:
            vals = np.frombuffer(buf, dtype=np.float64).copy()
            del buf[:]
            m = self._map
            _k_add(vals, m.table, m.bounds, m.shift, self._st)
        self._cache = None

    def merge(self, other: "QuantileSketch") -> None:
        """Add every value of ``other`` to this sketch, exactly (in place)."""
        if not isinstance(other, QuantileSketch):
            raise TypeError("QuantileSketch.merge: expected a QuantileSketch")
        if other._map is not self._map or other._mb != self._mb:
            raise ValueError(
                f"QuantileSketch.merge: incompatible sketches (relative_accuracy "
                f"{self._map.a} vs {other._map.a}, max_buckets {self._mb} vs {other._mb})")
        if self._buf:
            self._flush()
        if other._buf:
            other._flush()
        if other is self:
            other = self.copy()
        _k_merge(self._st, other._st)
        self._cache = None

    @classmethod
    def merged(cls, sketches) -> "QuantileSketch":
        """A new sketch holding the merge of ``sketches`` (at least one)."""
        it = iter(sketches)
        try:
            first = next(it)
        except StopIteration:
            raise ValueError("QuantileSketch.merged: no sketches") from None
        out = first.copy()
        for s in it:
            out.merge(s)
        return out

    # ---- queries -------------------------------------------------------------------------

    @property
    def relative_accuracy(self) -> float:
        return self._map.a

    @property
    def max_buckets(self) -> int:
        return self._mb

    @property
    def count(self) -> int:
        if self._buf:
            self._flush()
        return int(self._st[_COUNT])

    @property
    def zero_count(self) -> int:
        if self._buf:
            self._flush()
        return int(self._st[_ZERO])

    @property
    def sum(self) -> float:
        if self._buf:
            self._flush()
        return float(self._fst[_SUM])

    @property
    def min(self) -> float:
        if self._buf:
            self._flush()
        return float(self._fst[_MIN]) if self._st[_COUNT] else math.nan

    @property
    def max(self) -> float:
        if self._buf:
            self._flush()
        return float(self._fst[_MAX]) if self._st[_COUNT] else math.nan

    @property
    def mean(self) -> float:
        if self._buf:
            self._flush()
        n = int(self._st[_COUNT])
        return float(self._fst[_SUM]) / n if n else math.nan

    def __len__(self) -> int:
        return self.count

    def _build_cache(self):
        st = self._st
        n = int(st[_COUNT])
        zero = int(st[_ZERO])
        if n > zero:
            lo = int(st[_LO])
            hi = int(st[_HI])
            off = int(st[_OFF])
            cum = np.cumsum(self._counts[lo - off: hi - off + 1])
            reps = self._map.reps[lo: hi + 1]
        else:
            cum = np.zeros(0, np.int64)
            reps = np.zeros(0)
        fst = self._fst
        c = (n, zero, float(fst[_MIN]), float(fst[_MAX]), cum.tolist(), reps.tolist(), cum, reps)
        self._cache = c
        return c

    def quantile(self, q: float) -> float:
        """Estimate of the q-quantile (numpy method="lower"), within relative_accuracy."""
        if self._buf:
            self._flush()
        c = self._cache
        if c is None:
            c = self._build_cache()
        if not (0.0 <= q <= 1.0):
            raise ValueError(f"QuantileSketch.quantile: q must be in [0, 1], got {q!r}")
        n, zero, mn, mx = c[0], c[1], c[2], c[3]
        if n == 0:
            return math.nan
        k = math.floor((n - 1) * q)
        if k <= 0:
            return mn
        if k >= n - 1:
            return mx
        if k < zero:
            return 0.0
        v = c[5][bisect_right(c[4], k - zero)]
        return mn if v < mn else (mx if v > mx else v)

    def quantiles(self, qs) -> np.ndarray:
        """Vectorised ``quantile`` for an array/sequence of q; returns a float64 array."""
        if self._buf:
            self._flush()
        c = self._cache
        if c is None:
            c = self._build_cache()
        q = np.asarray(qs, dtype=np.float64)
        if not np.all((q >= 0.0) & (q <= 1.0)):
            raise ValueError("QuantileSketch.quantiles: every q must be in [0, 1]")
        n, zero, mn, mx, cum, reps = c[0], c[1], c[2], c[3], c[6], c[7]
        if n == 0:
            return np.full(q.shape, math.nan)
        k = np.floor((n - 1) * q).astype(np.int64)
        idx = np.searchsorted(cum, k - zero, side="right")
        np.minimum(idx, max(len(reps) - 1, 0), out=idx)
        out = reps[idx] if len(reps) else np.zeros(q.shape)
        out = np.clip(out, mn, mx)
        out = np.where(k < zero, 0.0, out)
        out = np.where(k <= 0, mn, out)
        out = np.where(k >= n - 1, mx, out)
        return out.astype(np.float64)

    def buckets(self) -> tuple[int, np.ndarray]:
        """(lowest key, counts) of the occupied bucket span (keys are global bucket indices:
        bucket key i covers (b[i-1], b[i]], b[i] ~= gamma**i).  Empty span if no positive value."""
        if self._buf:
            self._flush()
        st = self._st
        if st[_COUNT] == st[_ZERO]:
            return 0, np.zeros(0, np.int64)
        lo, hi, off = int(st[_LO]), int(st[_HI]), int(st[_OFF])
        return lo + self._map.base, self._counts[lo - off: hi - off + 1].copy()

    # ---- copy / equality / repr ----------------------------------------------------------

    def copy(self) -> "QuantileSketch":
        if self._buf:
            self._flush()
        new = QuantileSketch.__new__(QuantileSketch)
        new._map = self._map
        new._mb = self._mb
        new._set_state(self._st.copy())
        new._buf = array.array("d")
        new._cache = None
        return new

    __copy__ = copy

    def __deepcopy__(self, memo):
        return self.copy()

    def __eq__(self, other) -> bool:
        if not isinstance(other, QuantileSketch):
            return NotImplemented
        if self._map.a != other._map.a or self.max_buckets != other.max_buckets:
            return False
        if self.count != other.count or self.zero_count != other.zero_count:
            return False
        if self.count == 0:
            return True
        if self.min != other.min or self.max != other.max:
            return False
        if not math.isclose(self.sum, other.sum, rel_tol=1e-9):
            return False
        ka, ca = self.buckets()
        kb, cb = other.buckets()
        return ka == kb and np.array_equal(ca, cb)

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        n = self.count
        if n == 0:
            return f"QuantileSketch(relative_accuracy={self._map.a!r}, count=0)"
        p50, p90, p99 = (self.quantile(q) for q in (0.5, 0.9, 0.99))
        return (f"QuantileSketch(relative_accuracy={self._map.a!r}, count={n}, "
                f"p50={p50:.6g}, p90={p90:.6g}, p99={p99:.6g})")

    def __reduce__(self):
        return (QuantileSketch.from_bytes, (self.to_bytes(),))

    # ---- serialization -------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Compact, versioned, exact binary form (see the module docstring)."""
        if self._buf:
            self._flush()
        st = self._st
        out = bytearray(_MAGIC)
        out.append(_VERSION)
        out += struct.pack("<d", self._map.a)
        _put_varint(out, self._mb)
        n = int(st[_COUNT])
        _put_varint(out, n)
        if n:
            zero = int(st[_ZERO])
            _put_varint(out, zero)
            out += struct.pack("<ddd", *self._fst.tolist())
            if n > zero:
                lo, hi, off = int(st[_LO]), int(st[_HI]), int(st[_OFF])
                _put_varint(out, _zigzag(lo + self._map.base))
                _put_varint(out, hi - lo + 1)
                out += _encode_counts(self._counts[lo - off: hi - off + 1])
        out += struct.pack("<I", zlib.crc32(out))
        return bytes(out)

    @classmethod
    def from_bytes(cls, data) -> "QuantileSketch":
        """Inverse of ``to_bytes``; raises ValueError for corrupt, truncated or foreign data."""
        try:
            data = bytes(data)
        except TypeError:
            raise ValueError("QuantileSketch.from_bytes: expected bytes") from None
        if len(data) < len(_MAGIC) + 1 + 8 + 2 + 4:
            raise ValueError(f"QuantileSketch.from_bytes: truncated data ({len(data)} bytes)")
        if data[:4] != _MAGIC:
            raise ValueError("QuantileSketch.from_bytes: bad magic (not a QuantileSketch)")
        if data[4] != _VERSION:
            raise ValueError(f"QuantileSketch.from_bytes: unknown version {data[4]} "
                             f"(this code reads version {_VERSION})")
        body_end = len(data) - 4
        (crc,) = struct.unpack("<I", data[body_end:])
        if zlib.crc32(data[:body_end]) != crc:
            raise ValueError("QuantileSketch.from_bytes: checksum mismatch (corrupt or "
                             "truncated data)")
        r = _Reader(data, body_end)
        r.pos = 5
        a = r.f64("relative_accuracy")
        if not (MIN_RELATIVE_ACCURACY <= a <= MAX_RELATIVE_ACCURACY):
            raise ValueError(f"QuantileSketch.from_bytes: bad relative_accuracy {a!r}")
        mb = r.varint("max_buckets")
        if not MIN_MAX_BUCKETS <= mb <= MAX_MAX_BUCKETS:
            raise ValueError(f"QuantileSketch.from_bytes: bad max_buckets {mb}")
        s = cls(a, max_buckets=mb)
        n = r.varint("count")
        if n:
            m = s._map
            zero = r.varint("zero_count")
            if zero > n:
                raise ValueError("QuantileSketch.from_bytes: zero_count > count")
            vmin, vmax, vsum = r.f64("min"), r.f64("max"), r.f64("sum")
            if not (0.0 <= vmin <= vmax < _INF) or not (vsum >= 0.0):
                raise ValueError("QuantileSketch.from_bytes: bad min/max/sum")
            if (zero > 0) != (vmin == 0.0) or (zero == n) != (vmax == 0.0):
                raise ValueError("QuantileSketch.from_bytes: min/max inconsistent with "
                                 "zero_count")
            if zero == n and vsum != 0.0:
                raise ValueError("QuantileSketch.from_bytes: bad sum")
            st = s._st
            st[_COUNT] = n
            st[_ZERO] = zero
            s._fst[:] = (vmin, vmax, vsum)
            if n > zero:
                key = _unzigzag(r.varint("lowest key"))
                span = r.varint("span")
                lo = key - m.base
                hi = lo + span - 1
                if not (1 <= span <= mb) or not (m.pz <= lo and hi <= m.pt):
                    raise ValueError("QuantileSketch.from_bytes: bucket span out of range")
                if hi != m.key(vmax):
                    raise ValueError("QuantileSketch.from_bytes: buckets inconsistent "
                                     "with max")
                if zero == 0 and lo != max(m.key(vmin), hi - mb + 1):
                    raise ValueError("QuantileSketch.from_bytes: buckets inconsistent "
                                     "with min")
                counts = _decode_counts(r, span)
                if counts[0] == 0 or counts[-1] == 0:
                    raise ValueError("QuantileSketch.from_bytes: empty edge bucket")
                if sum(counts) != n - zero:
                    raise ValueError("QuantileSketch.from_bytes: bucket counts do not add "
                                     "up to count")
                off = lo - (mb - span) // 2
                s._counts[lo - off: hi - off + 1] = counts
                st[_OFF] = off
                st[_LO] = lo
                st[_HI] = hi
        if r.pos != body_end:
            raise ValueError(f"QuantileSketch.from_bytes: {body_end - r.pos} trailing bytes")
        return s


def _encode_counts(counts: np.ndarray) -> bytes:
    out = bytearray()
    put = _put_varint
    run = 0
    for c in counts.tolist():
        if c == 0:
            run += 1
            continue
        if run:
            out.append(0)
            put(out, run)
            run = 0
        if c < 0x80:
            out.append(c)
        else:
            put(out, c)
    return bytes(out)


def _decode_counts(r: _Reader, span: int) -> list[int]:
    counts: list[int] = []
    while len(counts) < span:
        c = r.varint("bucket count")
        if c == 0:
            run = r.varint("empty run")
            if run == 0 or len(counts) + run > span:
                raise ValueError("QuantileSketch.from_bytes: bad run of empty buckets")
            counts.extend([0] * run)
        else:
            counts.append(c)
    return counts
