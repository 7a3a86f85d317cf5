"""Tests for streams.sketch.QuantileSketch.

Three independent views are compared:
* numpy exact quantiles (``method="lower"``): the relative-error guarantee;
* ``RefSketch``, a small pure-Python reference with the same mapping semantics (bucket
  ``i`` covers ``(b[i-1], b[i]]``, ``b[i] = math.exp(i * log(gamma))``; collapsing keeps the
  ``max_buckets`` buckets ending at the bucket of ``max``): bucket-for-bucket equality and
  bit-identical quantiles;
* the sketch itself under other batchings/orders/merges: exact equality.
"""

from __future__ import annotations

import math
import os
import pickle
import struct
import subprocess
import sys
import zlib
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import sketch as sk
from streams.sketch import QuantileSketch

A = 0.01
QS = np.concatenate([np.linspace(0.0, 1.0, 101), [0.001, 0.005, 0.995, 0.999, 0.9999]])
DBL_MIN = 2.2250738585072014e-308
DBL_MAX = sys.float_info.max

FAST = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------------------------------
# pure-Python reference
# ---------------------------------------------------------------------------------------


class RefSketch:
    """Keeps every value; buckets/quantiles are computed from the multiset on demand."""

    def __init__(self, a: float = A, max_buckets: int = 2048):
        ai = a * (1.0 - 1e-7)
        self.a = a
        self.gamma = (1.0 + ai) / (1.0 - ai)
        self.lg = math.log(self.gamma)
        self.max_buckets = max_buckets
        self.values: list[float] = []
        self._buckets = None

    def add(self, x: float) -> None:
        if not (x >= 0.0 and x < math.inf):
            raise ValueError(x)
        self.values.append(float(x))
        self._buckets = None

    def bound(self, i: int) -> float:
        try:
            return math.exp(i * self.lg)
        except OverflowError:
            return math.inf

    def key(self, x: float) -> int:
        """Smallest i with x <= b[i]; subnormals are treated as the smallest normal."""
        x = max(x, DBL_MIN)
        i = math.ceil(math.log(x) / self.lg)
        while x > self.bound(i):
            i += 1
        while x <= self.bound(i - 1):
            i -= 1
        return i

    def rep(self, i: int) -> float:
        lo, hi = self.bound(i - 1), self.bound(i)
        if hi == math.inf:
            return min(lo * (2.0 * self.gamma / (1.0 + self.gamma)), DBL_MAX)
        r = hi / lo
        return lo * (2.0 * r / (1.0 + r))

    def buckets(self) -> dict[int, int]:
        if self._buckets is None:
            pos = [x for x in self.values if x > 0]
            if not pos:
                self._buckets = {}
            else:
                top = self.key(max(pos))
                floor = top - self.max_buckets + 1
                self._buckets = dict(Counter(max(self.key(x), floor) for x in pos))
        return self._buckets

    def quantile(self, q: float) -> float:
        n = len(self.values)
        if n == 0:
            return math.nan
        mn, mx = min(self.values), max(self.values)
        k = math.floor((n - 1) * q)
        if k <= 0:
            return mn
        if k >= n - 1:
            return mx
        zero = sum(1 for x in self.values if x == 0)
        if k < zero:
            return 0.0
        k -= zero
        cum = 0
        for key, c in sorted(self.buckets().items()):
            cum += c
            if cum > k:
                v = self.rep(key)
                return min(max(v, mn), mx)
        raise AssertionError("rank beyond count")


def sketch_buckets(s: QuantileSketch) -> dict[int, int]:
    lo, counts = s.buckets()
    return {lo + i: int(c) for i, c in enumerate(counts) if c}


def sketch_of(values, a=A, **kw) -> QuantileSketch:
    s = QuantileSketch(a, **kw)
    s.add_many(np.asarray(values, dtype=np.float64))
    return s


def assert_within_bound(s: QuantileSketch, x: np.ndarray, qs=QS, a=A) -> float:
    """Every quantile within the relative bound of numpy's exact "lower" quantile."""
    exact = np.quantile(x, qs, method="lower")
    est = s.quantiles(qs)
    worst = 0.0
    for q, e, v in zip(qs, exact, est):
        assert v == s.quantile(float(q)), (q, v, s.quantile(float(q)))
        if e == 0:
            assert v == 0.0, (q, e, v)
            continue
        rel = abs(v - e) / e
        worst = max(worst, rel)
        assert rel <= a, f"q={q}: estimate {v!r} vs exact {e!r}: rel error {rel:.3g} > {a}"
    return worst


def assert_matches_reference(s: QuantileSketch, values, a=A, max_buckets=None, qs=QS):
    ref = RefSketch(a, max_buckets or s.max_buckets)
    for v in np.asarray(values, dtype=np.float64).tolist():
        ref.add(v)
    assert sketch_buckets(s) == ref.buckets()
    assert s.count == len(ref.values)
    assert s.zero_count == sum(1 for v in ref.values if v == 0)
    for q in qs:
        assert s.quantile(float(q)) == ref.quantile(float(q)), q


# ---------------------------------------------------------------------------------------
# data generators
# ---------------------------------------------------------------------------------------

DISTRIBUTIONS = ["lognormal_mix", "exponential", "pareto", "constant", "uniform_int",
                 "sorted_asc", "sorted_desc", "duplicates", "huge_range", "with_zeros"]


def generate(kind: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "lognormal_mix":
        w = rng.random(n)
        return np.where(w < 0.6, rng.lognormal(np.log(420), 0.5, n),
                        np.where(w < 0.95, rng.lognormal(np.log(1500), 0.9, n),
                                 rng.lognormal(np.log(9000), 1.2, n)))
    if kind == "exponential":
        return rng.exponential(rng.uniform(0.1, 1000), n)
    if kind == "pareto":
        return (rng.pareto(rng.uniform(0.5, 3.0), n) + 1.0) * rng.uniform(1e-3, 10)
    if kind == "constant":
        return np.full(n, float(rng.choice([0.0, 1e-3, 1.0, 7.5, 3600.0, 1e7])))
    if kind == "uniform_int":
        return rng.integers(0, int(rng.integers(1, 10_000)), n).astype(np.float64)
    if kind == "sorted_asc":
        return np.sort(rng.lognormal(5, 2, n))
    if kind == "sorted_desc":
        return np.sort(rng.lognormal(5, 2, n))[::-1].copy()
    if kind == "duplicates":
        return rng.choice(rng.lognormal(3, 2, 5), n)
    if kind == "huge_range":
        return 10.0 ** rng.uniform(-3, 7, n)
    if kind == "with_zeros":
        x = rng.lognormal(4, 1.5, n)
        x[rng.random(n) < rng.uniform(0, 0.9)] = 0.0
        return x
    raise AssertionError(kind)


# ---------------------------------------------------------------------------------------
# accuracy against numpy and the reference
# ---------------------------------------------------------------------------------------


@FAST
@given(kind=st.sampled_from(DISTRIBUTIONS), n=st.integers(1, 3000), seed=st.integers(0, 2**32 - 1))
def test_distributions_within_bound_and_match_reference(kind, n, seed):
    x = generate(kind, n, seed)
    s = sketch_of(x)
    assert_within_bound(s, x)
    assert_matches_reference(s, x)
    assert s.count == n and s.min == x.min() and s.max == x.max()
    assert math.isclose(s.sum, float(np.sum(x)), rel_tol=1e-9, abs_tol=1e-300)


@FAST
@given(st.lists(st.floats(min_value=0.0, max_value=1e300, allow_nan=False,
                          allow_infinity=False, allow_subnormal=False), min_size=1, max_size=300),
       st.floats(0.0, 1.0))
def test_arbitrary_floats(values, q):
    # the whole normal double range (~616 decades) fits in 2**17 buckets: nothing collapses
    x = np.array(values)
    s = sketch_of(x, max_buckets=1 << 17)
    assert_within_bound(s, x, qs=np.array([q, 0.5, 0.9, 0.99]))
    assert_matches_reference(s, x, max_buckets=1 << 17, qs=[q, 0.5, 0.9])
    # default store: exact reference semantics (collapsing beyond ~17 decades)
    assert_matches_reference(sketch_of(x), x, qs=[q, 0.5, 0.9])


@pytest.mark.parametrize("values", [[5.0], [0.0], [1e-3, 1e7], [2.0, 2.0], [0.0, 3.0], [7.0, 0.0],
                                    [DBL_MIN], [DBL_MAX], [DBL_MAX, DBL_MIN], [5e-324, 1.0]])
def test_tiny_inputs(values):
    x = np.array(values)
    s = sketch_of(x)
    for q in QS:
        e = float(np.quantile(x, q, method="lower"))
        v = s.quantile(float(q))
        if e == 0 or e < DBL_MIN:  # zeros exact; subnormals outside the guaranteed range
            assert v == e or (e < DBL_MIN and v <= DBL_MIN * 1.02)
        else:
            assert abs(v - e) <= A * e
    assert s.quantile(0.0) == x.min() and s.quantile(1.0) == x.max()
    assert_matches_reference(s, x)


@pytest.mark.parametrize("c", [0.0, 1e-3, 0.37, 1.0, 60.0, 3600.0, 86400.0 * 3, 1e7])
def test_constant_input_is_exact(c):
    s = sketch_of(np.full(1001, c))
    assert list(s.quantiles(QS)) == [c] * len(QS)
    assert s.min == s.max == c


@pytest.mark.parametrize("a", [0.001, 0.005, 0.02, 0.05, 0.1, 0.5])
def test_other_accuracies(a):
    x = generate("lognormal_mix", 5000, 7)
    s = sketch_of(x, a)
    assert_within_bound(s, x, a=a)
    assert_matches_reference(s, x, a=a)
    assert sk._mapping(a).max_error <= a


def test_numpy_rank_convention_documented_example():
    s = sketch_of([1.0, 2.0, 3.0, 4.0])
    assert s.quantile(0.5) == pytest.approx(2.0, rel=A)  # floor(0.5 * 3) = 1 -> 2.0
    assert s.quantile(0.0) == 1.0 and s.quantile(1.0) == 4.0
    assert s.quantile(0.99) == pytest.approx(3.0, rel=A)  # floor(2.97) = 2 -> 3.0


def test_zeros_counted_exactly():
    x = np.array([0.0] * 70 + [5.0] * 30)
    s = sketch_of(x)
    assert s.zero_count == 70
    assert s.quantile(0.7) == 0.0  # floor(99 * 0.7) = 69 -> a zero
    assert s.quantile(0.71) == pytest.approx(5.0, rel=A)  # index 70 -> 5.0
    s2 = sketch_of([-0.0, 0.0, 1.0])
    assert s2.zero_count == 2 and s2.min == 0.0 and math.copysign(1, s2.min) == 1


# ---------------------------------------------------------------------------------------
# mapping determinism: add == add_many == merge == reference, bit for bit
# ---------------------------------------------------------------------------------------


def edge_values(a=A, count=400, seed=3):
    m = sk._mapping(a)
    rng = np.random.default_rng(seed)
    ps = rng.integers(m.pz, m.pt, count)
    b = m.bounds[ps]
    vals = np.concatenate([b, np.nextafter(b, 0), np.nextafter(b, np.inf)])
    vals = vals[np.isfinite(vals)]
    extra = [DBL_MIN, np.nextafter(DBL_MIN, 1), DBL_MAX, 5e-324, 1e-310, 1e-3, 1.0, 2.0, 1e7]
    return np.concatenate([vals, extra])


@pytest.mark.parametrize("a", [0.01, 0.001, 0.1])
def test_key_on_boundaries_matches_reference(a):
    m = sk._mapping(a)
    ref = RefSketch(a)
    for x in edge_values(a).tolist():
        p = m.key(x)
        assert p + m.base == ref.key(x), x
        s = QuantileSketch(a)
        s.add_many(np.array([x]))
        assert sketch_buckets(s) == {p + m.base: 1}, x


@FAST
@given(st.lists(st.floats(min_value=0.0, max_value=1e12, allow_nan=False), min_size=1,
                max_size=2000))
def test_add_equals_add_many(values):
    a = QuantileSketch()
    for v in values:
        a.add(v)
    b = sketch_of(values)
    assert a == b
    assert sketch_buckets(a) == sketch_buckets(b)
    assert a.min == b.min and a.max == b.max and a.count == b.count


def test_add_equals_add_many_edge_values():
    x = edge_values()
    a = QuantileSketch(max_buckets=1 << 16)
    for v in x.tolist():
        a.add(v)
    b = sketch_of(x, max_buckets=1 << 16)
    assert a == b
    ref = RefSketch(A, 1 << 16)
    for v in x.tolist():
        ref.add(v)
    assert sketch_buckets(a) == ref.buckets()


def test_add_accepts_python_and_numpy_scalars():
    s = QuantileSketch()
    for v in (1, 2.5, np.float32(3.0), np.float64(4.0), np.int64(5), True):
        s.add(v)
    assert s.count == 6 and s.max == 5.0


# ---------------------------------------------------------------------------------------
# merge
# ---------------------------------------------------------------------------------------


@FAST
@given(kind=st.sampled_from(DISTRIBUTIONS), n=st.integers(0, 3000), seed=st.integers(0, 2**32 - 1),
       cuts=st.lists(st.floats(0, 1), min_size=2, max_size=2), max_buckets=st.sampled_from([16, 64, 2048]))
def test_merge_is_exact_associative_commutative(kind, n, seed, cuts, max_buckets):
    x = generate(kind, n, seed) if n else np.zeros(0)
    rng = np.random.default_rng(seed)
    rng.shuffle(x)
    i, j = sorted(int(c * n) for c in cuts)
    parts = [x[:i], x[i:j], x[j:]]
    whole = sketch_of(x, max_buckets=max_buckets)
    sa, sb, sc = (sketch_of(p, max_buckets=max_buckets) for p in parts)
    orders = [
        ((sa, sb), sc), ((sc, sb), sa), ((sb, sa), sc), ((sb, sc), sa),
    ]
    for (p, q), r in orders:
        m = p.copy()
        m.merge(q)
        m.merge(r)
        assert m == whole
        assert sketch_buckets(m) == sketch_buckets(whole)
    # a.merge(b.merge(c)) == (a.merge(b)).merge(c)
    bc = sb.copy()
    bc.merge(sc)
    a_bc = sa.copy()
    a_bc.merge(bc)
    assert a_bc == whole
    if n:
        assert_matches_reference(whole, x, max_buckets=max_buckets, qs=[0.5, 0.9, 0.99])
    if max_buckets == 2048 and n:
        assert_within_bound(a_bc, x)


def test_merge_of_many_minutes_and_arrival_order():
    rng = np.random.default_rng(11)
    x = generate("lognormal_mix", 60 * 500, 11)
    minutes = [sketch_of(c) for c in np.split(x, 60)]
    total = QuantileSketch.merged(minutes)
    shuffled = QuantileSketch.merged([minutes[i] for i in rng.permutation(60)])
    replay = QuantileSketch()
    for v in x[rng.permutation(len(x))].tolist():
        replay.add(v)
    assert total == shuffled == replay == sketch_of(x)
    assert total.to_bytes() == shuffled.to_bytes()
    assert_within_bound(total, x)


def test_merge_into_empty_and_with_empty_and_self():
    x = generate("exponential", 500, 1)
    s = sketch_of(x)
    e = QuantileSketch()
    e.merge(s)
    assert e == s
    s2 = s.copy()
    s2.merge(QuantileSketch())
    assert s2 == s
    s3 = s.copy()
    s3.merge(s3)
    assert s3 == sketch_of(np.concatenate([x, x]))


def test_merge_rejects_incompatible():
    with pytest.raises(ValueError, match="incompatible"):
        QuantileSketch(0.01).merge(QuantileSketch(0.02))
    with pytest.raises(ValueError, match="incompatible"):
        QuantileSketch(max_buckets=64).merge(QuantileSketch(max_buckets=128))
    with pytest.raises(TypeError):
        QuantileSketch().merge([1.0])


# ---------------------------------------------------------------------------------------
# bounded memory (collapsing the lowest buckets)
# ---------------------------------------------------------------------------------------


def test_collapse_keeps_high_quantiles_and_bounds_memory():
    rng = np.random.default_rng(5)
    # 1e-300 .. 1e300: far beyond 2048 buckets
    x = 10.0 ** rng.uniform(-300, 300, 20000)
    s = sketch_of(x)
    lo, counts = s.buckets()
    assert len(counts) <= 2048
    assert s._st.nbytes == (2048 + sk._NST) * 8
    assert_matches_reference(s, x, qs=[0.5, 0.9, 0.99, 0.999])
    # quantiles above the collapse floor (the top 2048 buckets ~ 17.6 decades) keep the
    # guarantee; with 600 decades of data that is the top ~3 %
    ref = RefSketch(A)
    floor_value = ref.bound(lo)  # values <= this are collapsed into bucket `lo`
    qs = np.array([0.975, 0.98, 0.99, 0.999, 1.0])
    exact = np.quantile(x, qs, method="lower")
    assert np.all(exact > floor_value)
    assert np.all(np.abs(s.quantiles(qs) - exact) <= A * exact)
    # realistic response times (1 ms .. 1e7 s) never collapse with the default
    y = 10.0 ** rng.uniform(-3, 7, 20000)
    t = sketch_of(y)
    assert len(t.buckets()[1]) <= 1160
    assert_within_bound(t, y)


def test_collapse_independent_of_order():
    rng = np.random.default_rng(9)
    x = 10.0 ** rng.uniform(-5, 5, 3000)
    # ascending: the window keeps moving up and collapsing; descending: collapse at once
    asc = sketch_of(np.sort(x), max_buckets=32)
    desc = sketch_of(np.sort(x)[::-1], max_buckets=32)
    one = QuantileSketch(max_buckets=32)
    for v in np.sort(x).tolist():
        one.add(v)
    assert asc == desc == one
    assert_matches_reference(asc, x, max_buckets=32)


# ---------------------------------------------------------------------------------------
# rejection paths
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1.0, -1e-300, math.nan, math.inf, -math.inf, -5, 10**400])
def test_add_rejects(bad):
    s = sketch_of([1.0, 2.0])
    before = s.to_bytes()
    with pytest.raises(ValueError, match="invalid value"):
        s.add(bad)
    assert s.to_bytes() == before


@pytest.mark.parametrize("bad", ["1.0", None, b"x", [1.0]])
def test_add_rejects_non_numbers(bad):
    with pytest.raises((TypeError, ValueError)):
        QuantileSketch().add(bad)


@FAST
@given(n=st.integers(1, 500), data=st.data())
def test_add_many_rejects_whole_batch_naming_first_bad_index(n, data):
    x = generate("lognormal_mix", n, n)
    bad_vals = data.draw(st.lists(st.sampled_from([-1.0, math.nan, math.inf, -math.inf, -1e-310]),
                                  min_size=1, max_size=3))
    idx = sorted(set(data.draw(st.lists(st.integers(0, n - 1), min_size=len(bad_vals),
                                        max_size=len(bad_vals)))))
    for i, b in zip(idx, bad_vals):
        x[i] = b
    s = sketch_of([3.0, 0.0])
    before = s.to_bytes()
    with pytest.raises(ValueError, match=f"index {idx[0]}\\b"):
        s.add_many(x)
    assert s.to_bytes() == before
    with pytest.raises(ValueError, match=f"index {idx[0]}\\b"):
        s.add_many(x.tolist())
    assert s.to_bytes() == before


def test_add_many_input_kinds():
    s = QuantileSketch()
    s.add_many([1, 2, 3])
    s.add_many((4.5,))
    s.add_many(np.arange(5, dtype=np.int32))
    s.add_many(np.array([[1.0, 2.0], [3.0, 4.0]]))
    s.add_many(np.arange(10.0)[::3])
    s.add_many(np.array([1.0, 2.0], dtype=np.float32))
    s.add_many([])
    ro = np.arange(3.0)
    ro.flags.writeable = False
    s.add_many(ro)
    assert s.count == 3 + 1 + 5 + 4 + 4 + 2 + 3
    with pytest.raises(TypeError):
        s.add_many("123")
    with pytest.raises(TypeError):
        s.add_many(np.array(["a", "b"]))
    with pytest.raises(TypeError):
        s.add_many([1.0, "x"])
    with pytest.raises(ValueError, match="index 1"):
        s.add_many([1.0, 10**400])


@pytest.mark.parametrize("a", [0.0, -0.01, 1e-4, 0.6, 1.0, math.nan, "x", None])
def test_bad_relative_accuracy(a):
    with pytest.raises(ValueError):
        QuantileSketch(a)


@pytest.mark.parametrize("mb", [0, 8, 1.5, True, 10**9, "64"])
def test_bad_max_buckets(mb):
    with pytest.raises(ValueError):
        QuantileSketch(max_buckets=mb)


@pytest.mark.parametrize("q", [-0.1, 1.1, math.nan, math.inf])
def test_bad_q(q):
    s = sketch_of([1.0, 2.0])
    with pytest.raises(ValueError):
        s.quantile(q)
    with pytest.raises(ValueError):
        s.quantiles([0.5, q])


def test_empty_sketch():
    s = QuantileSketch()
    assert s.count == 0 and s.sum == 0.0
    assert all(math.isnan(v) for v in (s.quantile(0.5), s.min, s.max, s.mean))
    assert np.isnan(s.quantiles([0.1, 0.9])).all()
    assert QuantileSketch.from_bytes(s.to_bytes()) == s
    assert "count=0" in repr(s)


# ---------------------------------------------------------------------------------------
# serialization
# ---------------------------------------------------------------------------------------


@FAST
@given(kind=st.sampled_from(DISTRIBUTIONS), n=st.integers(0, 2000), seed=st.integers(0, 2**32 - 1),
       max_buckets=st.sampled_from([16, 2048]), a=st.sampled_from([0.01, 0.001, 0.05]))
def test_to_bytes_round_trip(kind, n, seed, max_buckets, a):
    x = generate(kind, n, seed) if n else np.zeros(0)
    s = sketch_of(x, a, max_buckets=max_buckets)
    data = s.to_bytes()
    r = QuantileSketch.from_bytes(data)
    assert r == s
    assert r.sum == s.sum and r.relative_accuracy == a and r.max_buckets == max_buckets
    assert r.to_bytes() == data
    assert sketch_buckets(r) == sketch_buckets(s)
    np.testing.assert_array_equal(r.quantiles(QS), s.quantiles(QS))
    # the decoded sketch keeps working: add/merge like the original
    y = generate("exponential", 50, seed)
    r.add_many(y)
    s.add_many(y)
    assert r == s
    assert pickle.loads(pickle.dumps(s)) == s


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_from_bytes_rejections():
    s = sketch_of(generate("lognormal_mix", 1000, 2))
    good = s.to_bytes()
    body = good[:-4]
    cases = {
        "bad magic": _with_crc(b"XXXX" + body[4:]),
        "unknown version": _with_crc(body[:4] + b"\x09" + body[5:]),
        "checksum": good[:-1] + bytes([good[-1] ^ 1]),
        "trailing": _with_crc(body + b"\x00"),
        "truncated": good[:10],
    }
    for what, data in cases.items():
        with pytest.raises(ValueError, match=what.split()[0] if what != "trailing" else "trailing"):
            QuantileSketch.from_bytes(data)
    # counts that do not add up: bump the last bucket count, keep the CRC valid
    lo, counts = s.buckets()
    assert counts[-1] < 0x7F
    tampered = bytearray(body)
    tampered[-1] += 1
    with pytest.raises(ValueError, match="add up"):
        QuantileSketch.from_bytes(_with_crc(bytes(tampered)))
    # negative min
    n_hdr = 4 + 1 + 8
    bad = bytearray(body)
    pos = body.index(struct.pack("<d", s.min))
    bad[pos:pos + 8] = struct.pack("<d", -1.0)
    with pytest.raises(ValueError, match="min"):
        QuantileSketch.from_bytes(_with_crc(bytes(bad)))
    bad = bytearray(body)
    bad[5:13] = struct.pack("<d", 0.7)
    with pytest.raises(ValueError, match="relative_accuracy"):
        QuantileSketch.from_bytes(_with_crc(bytes(bad)))
    assert n_hdr == 13
    for t in (None, 12, "abc"):
        with pytest.raises(ValueError):
            QuantileSketch.from_bytes(t)


def test_from_bytes_every_truncation_and_bitflip():
    s = sketch_of(generate("with_zeros", 300, 4))
    good = s.to_bytes()
    for k in range(len(good)):
        with pytest.raises(ValueError):
            QuantileSketch.from_bytes(good[:k])
    rng = np.random.default_rng(0)
    for _ in range(300):
        b = bytearray(good)
        i = int(rng.integers(len(b)))
        b[i] ^= 1 << int(rng.integers(8))
        with pytest.raises(ValueError):
            QuantileSketch.from_bytes(bytes(b))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_from_bytes_fuzz_only_value_error(data, valid_crc):
    if valid_crc:
        data = _with_crc(b"CSQS\x01" + data)
    try:
        s = QuantileSketch.from_bytes(data)
    except ValueError:
        return
    # anything accepted must be a consistent sketch
    assert s.count >= s.zero_count
    assert QuantileSketch.from_bytes(s.to_bytes()) == s


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_from_bytes_fuzz_structured(data):
    s = sketch_of(generate(data.draw(st.sampled_from(DISTRIBUTIONS)), 200,
                           data.draw(st.integers(0, 1000))))
    body = bytearray(s.to_bytes()[:-4])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] = data.draw(st.integers(0, 255))
    try:
        r = QuantileSketch.from_bytes(_with_crc(bytes(body)))
    except ValueError:
        return
    assert sum(r.buckets()[1]) == r.count - r.zero_count
    r.quantiles(QS)


def test_serialized_size_of_an_hour():
    x = generate("lognormal_mix", 60 * 10_000, 1)
    hour = QuantileSketch.merged([sketch_of(c) for c in np.split(x, 60)])
    assert len(hour.to_bytes()) <= 2048


# ---------------------------------------------------------------------------------------
# misc API
# ---------------------------------------------------------------------------------------


def test_copy_is_independent_and_eq():
    s = sketch_of([1.0, 2.0, 3.0])
    c = s.copy()
    assert c == s and c is not s
    c.add(4.0)
    assert c != s and s.count == 3
    assert s != "x"
    assert QuantileSketch(0.01) != QuantileSketch(0.02)
    with pytest.raises(TypeError):
        hash(s)


def test_stats_and_repr():
    x = generate("exponential", 1000, 3)
    s = sketch_of(x)
    assert s.count == len(s) == 1000
    assert s.mean == pytest.approx(x.mean(), rel=1e-12)
    r = repr(s)
    assert "count=1000" in r and "p50=" in r and "p90=" in r and "p99=" in r


def test_sum_mismatch_breaks_equality_only_beyond_rounding():
    a = sketch_of([1.0, 2.0])
    b = sketch_of([2.0, 1.0])
    assert a == b
    b._fst[2] += 1e-3
    assert a != b


def test_import_does_not_compile_kernels():
    code = ("import streams, streams.sketch as s; "
            "assert not any(k.signatures for k in (s._k_add, s._k_merge, s._k_prepare)); "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout


# ---------------------------------------------------------------------------------------
# 10^7 values
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ten_million_values():
    n = 10**7
    x = generate("lognormal_mix", n, 2024)
    s = sketch_of(x)
    qs = np.array([0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 0.9999, 1.0])
    exact = np.quantile(x, qs, method="lower")
    worst = np.max(np.abs(s.quantiles(qs) - exact) / exact)
    assert worst <= A, worst
    # 60 "minutes", merged in a shuffled order: identical sketch, same error bound
    chunks = np.array_split(x, 60)
    rng = np.random.default_rng(1)
    minutes = [sketch_of(chunks[i]) for i in rng.permutation(60)]
    merged = QuantileSketch.merged(minutes)
    assert merged == s
    assert sketch_buckets(merged) == sketch_buckets(s)
    worst = np.max(np.abs(merged.quantiles(qs) - exact) / exact)
    assert worst <= A, worst
    assert s.count == n and s.min == x.min() and s.max == x.max()
    assert len(s.to_bytes()) < 4096


# -- batch queries over segments (the window records' centiles) -----------------------------
@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.one_of(st.just(0.0), st.floats(1e-3, 1e7)), max_size=40),
                min_size=1, max_size=12),
       st.lists(st.floats(0.0, 1.0), min_size=1, max_size=5))
def test_segment_quantiles_equal_a_sketch_per_segment(segments, qs):
    from streams.sketch import segment_quantiles
    values = np.array([v for seg in segments for v in seg], dtype=np.float64)
    offsets = np.cumsum([0] + [len(seg) for seg in segments])
    got = segment_quantiles(values, offsets, qs)
    for i, seg in enumerate(segments):
        if not seg:
            assert np.isnan(got[i]).all()
            continue
        sk = QuantileSketch()
        sk.add_many(np.array(seg))
        assert got[i].tolist() == [sk.quantile(q) for q in qs]


def test_segment_quantiles_on_long_segments_with_ties_and_zeros():
    """Window segments hold tens of thousands of values (a day of a busy trust), with many
    equal values and zeros: the selection the kernel uses gives the sketch's answers."""
    from streams.sketch import segment_quantiles
    rng = np.random.default_rng(7)
    segments = [np.round(rng.lognormal(6.0, 1.0, 40_000), 0),          # whole seconds: ties
                np.concatenate([np.zeros(5_000), rng.uniform(0.0, 3.0, 20_000)]),
                np.full(10_001, 421.5), rng.uniform(1.0, 2.0, 2)]
    qs = [0.99, 0.5, 0.9, 0.5, 0.0, 1.0, 0.25]
    values = np.concatenate(segments)
    offsets = np.cumsum([0] + [len(seg) for seg in segments])
    got = segment_quantiles(values, offsets, qs)
    for i, seg in enumerate(segments):
        sk = QuantileSketch()
        sk.add_many(seg)
        assert got[i].tolist() == [sk.quantile(q) for q in qs]
