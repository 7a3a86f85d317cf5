"""Numba kernels for window records and pressure, from the join's outcome logs.

A window record is an aggregate over the outcomes it holds. Which outcomes a window holds
is decided by the caller (`streams.fast.engine`) exactly as `streams.windows.WindowStore`
would have stored them, as a list of components `(lo, hi, a_lo, a_hi, on_time)`: outcomes
whose bucket lies in [lo, hi) and, for late ones, which were added after boundary a_lo and
up to boundary a_hi (on-time outcomes in the range are always included when `on_time`).
Centiles are the sketch's own answers (`streams.sketch.segment_quantiles`: bucket
representative of the lower-rank element, clamped to [min, max]) computed from a bucket
histogram instead of a sort."""

from __future__ import annotations

import numpy as np
from numba import njit

_ABS = np.int64(0x7FFFFFFFFFFFFFFF)
_BIG = np.int64(np.iinfo(np.int64).max)
_BLK = 6        # histogram blocks of 64 buckets


@njit(cache=True, nogil=True, _nrt=False)
def _lower(a, lo, hi, v):
    """First index in a[lo:hi] (sorted) with a[i] >= v."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True, _nrt=False)
def _quantiles(hist, blk, plo, phi, n, nzero, mn, mx, qs, reps, pbase, out, row):
    """segment_quantiles' answers for the multiset in hist (positive values) plus nzero
    zeros; mn/mx in seconds."""
    for j in range(qs.shape[0]):
        k = np.int64(np.floor((n - 1) * qs[j]))
        if k <= 0:
            out[row, j] = mn
        elif k >= n - 1:
            out[row, j] = mx
        elif k < nzero:
            out[row, j] = 0.0
        else:
            rank = k - nzero
            b = plo >> _BLK
            acc = np.int64(0)
            while acc + blk[b] <= rank:
                acc += blk[b]
                b += 1
            i = max(b << _BLK, plo)
            while acc + hist[i] <= rank:
                acc += hist[i]
                i += 1
            v = reps[i + pbase]
            out[row, j] = mn if v < mn else (mx if v > mx else v)


@njit(cache=True, nogil=True, _nrt=False)
def _clear(hist, blk, plo, phi):
    for i in range(plo, phi + 1):
        hist[i] = 0
    for b in range(plo >> _BLK, (phi >> _BLK) + 1):
        blk[b] = 0


@njit(cache=True, nogil=True, _nrt=False)
def _aggregate_close(c0, c1, comps, n_trusts, ob, oms, op, ko, lb, lms, lp, la, lko,
                     tb, tko, tlb, tla, tlko, qs, reps, pbase, npos, h1, b1, h2, b2,
                     agg, quant, tot):
    """Aggregates of one close (components c0..c1-1) into dense arrays indexed by trust
    (n_trusts = all trusts): agg[t, cat] = (count, sum ms, max ms, min ms, late, zeros),
    quant[t, cat] = centiles, tot[t] = (calls, hear_and_treat, redirected, redirected_c1,
    responses, has totals)."""
    agg[:] = 0
    tot[:] = 0
    st = n_trusts
    for cat in range(5):
        splo = npos
        sphi = np.int64(-1)
        for t in range(n_trusts):
            key = t * 5 + cat
            a0 = ko[key]
            a1 = ko[key + 1]
            l0 = lko[key]
            l1 = lko[key + 1]
            if a0 == a1 and l0 == l1:
                continue
            n = np.int64(0)
            tsum = np.int64(0)
            tmax = np.int64(-1)
            tmin = _BIG
            late = np.int64(0)
            nz = np.int64(0)
            plo = npos
            phi = np.int64(-1)
            for c in range(c0, c1):
                lo = comps[c, 0]
                hi = comps[c, 1]
                alo = comps[c, 2]
                ahi = comps[c, 3]
                if comps[c, 4] != 0 and a0 < a1:
                    i0 = _lower(ob, a0, a1, lo)
                    i1 = _lower(ob, i0, a1, hi)
                    for i in range(i0, i1):
                        v = oms[i]
                        n += 1
                        tsum += v
                        if v > tmax:
                            tmax = v
                        if v < tmin:
                            tmin = v
                        p = op[i]
                        if p < 0:
                            nz += 1
                        else:
                            p -= pbase
                            h1[p] += 1
                            b1[p >> _BLK] += 1
                            h2[p] += 1
                            b2[p >> _BLK] += 1
                            if p < plo:
                                plo = p
                            if p > phi:
                                phi = p
                if l0 < l1:
                    j0 = _lower(lb, l0, l1, lo)
                    j1 = _lower(lb, j0, l1, hi)
                    for j in range(j0, j1):
                        a = la[j]
                        if a <= alo or a > ahi:
                            continue
                        v = lms[j]
                        n += 1
                        late += 1
                        tsum += v
                        if v > tmax:
                            tmax = v
                        if v < tmin:
                            tmin = v
                        p = lp[j]
                        if p < 0:
                            nz += 1
                        else:
                            p -= pbase
                            h1[p] += 1
                            b1[p >> _BLK] += 1
                            h2[p] += 1
                            b2[p >> _BLK] += 1
                            if p < plo:
                                plo = p
                            if p > phi:
                                phi = p
            if n == 0:
                continue
            agg[t, cat, 0] = n
            agg[t, cat, 1] = tsum
            agg[t, cat, 2] = tmax
            agg[t, cat, 3] = tmin
            agg[t, cat, 4] = late
            agg[t, cat, 5] = nz
            _quantiles(h1, b1, plo, phi, n, nz, tmin / 1000.0, tmax / 1000.0, qs, reps,
                       pbase, quant[t], cat)
            if phi >= 0:
                _clear(h1, b1, plo, phi)
            if cat != 1:
                tot[t, 4] += n
            if agg[st, cat, 0] == 0:
                agg[st, cat, 2] = -1
                agg[st, cat, 3] = _BIG
            agg[st, cat, 0] += n
            agg[st, cat, 1] += tsum
            agg[st, cat, 4] += late
            agg[st, cat, 5] += nz
            if tmax > agg[st, cat, 2]:
                agg[st, cat, 2] = tmax
            if tmin < agg[st, cat, 3]:
                agg[st, cat, 3] = tmin
            if plo < splo:
                splo = plo
            if phi > sphi:
                sphi = phi
        sn = agg[st, cat, 0]
        if sn == 0:
            continue
        _quantiles(h2, b2, splo, sphi, sn, agg[st, cat, 5], agg[st, cat, 3] / 1000.0,
                   agg[st, cat, 2] / 1000.0, qs, reps, pbase, quant[st], cat)
        if sphi >= 0:
            _clear(h2, b2, splo, sphi)
    # call totals
    for t in range(n_trusts):
        for kind in range(4):
            key = t * 4 + kind
            a0 = tko[key]
            a1 = tko[key + 1]
            l0 = tlko[key]
            l1 = tlko[key + 1]
            if a0 == a1 and l0 == l1:
                continue
            cnt = np.int64(0)
            for c in range(c0, c1):
                lo = comps[c, 0]
                hi = comps[c, 1]
                alo = comps[c, 2]
                ahi = comps[c, 3]
                if comps[c, 4] != 0 and a0 < a1:
                    i0 = _lower(tb, a0, a1, lo)
                    cnt += _lower(tb, i0, a1, hi) - i0
                if l0 < l1:
                    j0 = _lower(tlb, l0, l1, lo)
                    j1 = _lower(tlb, j0, l1, hi)
                    for j in range(j0, j1):
                        a = tla[j]
                        if alo < a <= ahi:
                            cnt += 1
            tot[t, kind] = cnt
            tot[st, kind] += cnt
            if cnt:
                tot[t, 5] = 1
        tot[st, 4] += tot[t, 4]


@njit(cache=True, nogil=True)
def window_aggregates(comp_off, comps, n_trusts,
                      ob, oms, op, ko, lb, lms, lp, la, lko,
                      tb, tko, tlb, tla, tlko,
                      qs, reps, pbase, npos):
    """Dense aggregates of a batch of closes (the dict-building path): returns
    (agg[close, trust, cat, 6], quant[close, trust, cat, 3], tot[close, trust, 6]),
    trust index n_trusts being all trusts; see `_aggregate_close`."""
    nc = comp_off.shape[0] - 1
    nt1 = n_trusts + 1
    aggs = np.zeros((nc, nt1, 5, 6), np.int64)
    quants = np.zeros((nc, nt1, 5, 3), np.float64)
    tots = np.zeros((nc, nt1, 6), np.int64)
    h1 = np.zeros(npos + 1, np.int64)
    b1 = np.zeros((npos >> _BLK) + 2, np.int64)
    h2 = np.zeros(npos + 1, np.int64)
    b2 = np.zeros((npos >> _BLK) + 2, np.int64)
    for ci in range(nc):
        _aggregate_close(comp_off[ci], comp_off[ci + 1], comps, n_trusts, ob, oms, op, ko,
                         lb, lms, lp, la, lko, tb, tko, tlb, tla, tlko, qs, reps, pbase, npos,
                         h1, b1, h2, b2, aggs[ci], quants[ci], tots[ci])
    return aggs, quants, tots


# -- JSON text of window records ------------------------------------------------------------
_LIMIT = np.int64(1) << np.int64(49)   # thousandths; beyond, floats go through Python's repr


@njit(cache=True, nogil=True, _nrt=False)
def _round3(x, scratch):
    """Python's round(x, 3) (half-even on the exact binary value) as integer thousandths,
    for 0 <= x; -1 when too large for `_put_milli`."""
    if x < 0.0005:
        return np.int64(0)
    if x >= 5.0e11:
        return np.int64(-1)
    scratch[0] = x
    bits = scratch.view(np.int64)[0]
    e = (bits >> 52) & 0x7FF
    m = (bits & ((np.int64(1) << 52) - 1)) | (np.int64(1) << 52)
    shift = 1075 - e              # x = m / 2**shift, 1 <= shift <= 63 here
    num = m * 1000
    q = num >> shift
    r = num - (q << shift)
    half = np.int64(1) << (shift - 1)
    if r > half or (r == half and (q & 1) == 1):
        q += 1
    return q


@njit(cache=True, nogil=True, _nrt=False)
def _put_int(out, pos, v):
    if v < 0:
        out[pos] = 45
        pos += 1
        v = -v
    if v == 0:
        out[pos] = 48
        return pos + 1
    n = 0
    x = v
    while x > 0:
        x //= 10
        n += 1
    for i in range(n - 1, -1, -1):
        out[pos + i] = 48 + v % 10
        v //= 10
    return pos + n


@njit(cache=True, nogil=True, _nrt=False)
def _put_milli(out, pos, d):
    """repr(d / 1000) for 0 <= d < 2**49 (fixed notation, trailing zeros dropped)."""
    pos = _put_int(out, pos, d // 1000)
    out[pos] = 46
    f = d % 1000
    if f == 0:
        out[pos + 1] = 48
        return pos + 2
    pos += 1
    out[pos] = 48 + f // 100
    pos += 1
    f %= 100
    if f:
        out[pos] = 48 + f // 10
        pos += 1
        f %= 10
        if f:
            out[pos] = 48 + f
            pos += 1
    return pos


@njit(cache=True, nogil=True, _nrt=False)
def _put(out, pos, src, a, b):
    for i in range(a, b):
        out[pos] = src[i]
        pos += 1
    return pos


@njit(cache=True, nogil=True, _nrt=False)
def _put_lit(out, pos, which):
    return _put(out, pos, _LIT, _LIT_OFF[which], _LIT_OFF[which + 1])


_LITS = (b',"trust":', b',"category":', b',"count":', b',"mean_s":', b',"p50_s":',
         b',"p90_s":', b',"p99_s":', b',"max_s":', b',"sum_s":', b',"late":', b',"waiting":',
         b',"longest_wait_s":', b'}\n', b'null', b',"calls":', b',"hear_and_treat":',
         b',"redirected":', b',"redirected_c1":', b',"responses":', b'"ALL"',
         b'"C1"', b'"C1T"', b'"C2"', b'"C3"', b'"C4"',
         b',"count":0,"mean_s":null,"p50_s":null,"p90_s":null,"p99_s":null,"max_s":null,'
         b'"sum_s":0.0,"late":0', b'"*"')
_LIT = np.frombuffer(b"".join(_LITS), np.uint8).copy()
_LIT_OFF = np.cumsum([0] + [len(x) for x in _LITS]).astype(np.int64)
(L_TRUST, L_CATEGORY, L_COUNT, L_MEAN, L_P50, L_P90, L_P99, L_MAX, L_SUM, L_LATE, L_WAITING,
 L_LONGEST, L_END, L_NULL, L_CALLS, L_HT, L_RED, L_REDC1, L_RESP, L_ALL, L_C1, L_C1T, L_C2,
 L_C3, L_C4, L_EMPTY, L_STAR) = range(len(_LITS))


@njit(cache=True, nogil=True, _nrt=False)
def _category_json(out, pos, head, h0, h1_, tname, t0, t1, cat, agg, quant, wait_n, wait_l,
                   has_wait, scratch):
    """One category record (WindowStore._category_record's dict, as orjson writes it);
    returns the new position, or -1 when a number needs Python's float repr."""
    pos = _put(out, pos, head, h0, h1_)
    pos = _put_lit(out, pos, L_TRUST)
    if t0 < 0:
        pos = _put_lit(out, pos, L_STAR)
    else:
        pos = _put(out, pos, tname, t0, t1)
    pos = _put_lit(out, pos, L_CATEGORY)
    pos = _put_lit(out, pos, L_C1 + cat)
    n = agg[0]
    if n == 0:
        pos = _put_lit(out, pos, L_EMPTY)
    else:
        total = agg[1]
        if agg[2] >= _LIMIT or total >= _LIMIT:
            return np.int64(-1)
        pos = _put_lit(out, pos, L_COUNT)
        pos = _put_int(out, pos, n)
        pos = _put_lit(out, pos, L_MEAN)
        d = _round3(total / n / 1000.0, scratch)
        if d < 0:
            return np.int64(-1)
        pos = _put_milli(out, pos, d)
        for j in range(3):
            pos = _put_lit(out, pos, L_P50 + j)
            d = _round3(quant[j], scratch)
            if d < 0:
                return np.int64(-1)
            pos = _put_milli(out, pos, d)
        pos = _put_lit(out, pos, L_MAX)
        pos = _put_milli(out, pos, agg[2])
        pos = _put_lit(out, pos, L_SUM)
        pos = _put_milli(out, pos, total)
        pos = _put_lit(out, pos, L_LATE)
        pos = _put_int(out, pos, agg[4])
    if cat != 1:
        pos = _put_lit(out, pos, L_WAITING)
        if has_wait:
            if wait_l >= _LIMIT:
                return np.int64(-1)
            pos = _put_int(out, pos, wait_n)
            pos = _put_lit(out, pos, L_LONGEST)
            pos = _put_milli(out, pos, wait_l)
        else:
            pos = _put_int(out, pos, 0)
            pos = _put_lit(out, pos, L_LONGEST)
            pos = _put_milli(out, pos, 0)
    return _put_lit(out, pos, L_END)


@njit(cache=True, nogil=True, _nrt=False)
def _totals_json(out, pos, head, h0, h1_, tname, t0, t1, tot):
    pos = _put(out, pos, head, h0, h1_)
    pos = _put_lit(out, pos, L_TRUST)
    if t0 < 0:
        pos = _put_lit(out, pos, L_STAR)
    else:
        pos = _put(out, pos, tname, t0, t1)
    pos = _put_lit(out, pos, L_CATEGORY)
    pos = _put_lit(out, pos, L_ALL)
    for k in range(5):
        pos = _put_lit(out, pos, L_CALLS + k)
        pos = _put_int(out, pos, tot[k])
    return _put_lit(out, pos, L_END)


_KEY_CATS = np.frombuffer(b"C1C1TC2C3C4ALL", np.uint8).copy()
_KEY_CAT_OFF = np.array([0, 2, 5, 7, 9, 11, 14], np.int64)


@njit(cache=True, nogil=True, _nrt=False)
def _key(kout, kpos, kname, t, kname_off, cat, wkey):
    """A stats record's Kafka key, `trust/category/window` (raw, as `streams.windows.stats_key`)."""
    if t < 0:
        kout[kpos] = 42                                     # "*"
        kpos += 1
    else:
        kpos = _put(kout, kpos, kname, kname_off[t], kname_off[t + 1])
    kout[kpos] = 47
    kpos = _put(kout, kpos + 1, _KEY_CATS, _KEY_CAT_OFF[cat], _KEY_CAT_OFF[cat + 1])
    kout[kpos] = 47
    return _put(kout, kpos + 1, wkey, 0, wkey.shape[0])


@njit(cache=True, nogil=True, _nrt=False)
def span_record_text(head, tname, tname_off, kname, kname_off, wkey, order, n_span, stat,
                     ext, quant, totals, wn, wl, hw, out, voff, kout, koff, agg, tot,
                     scratch):
    """The records of one window close of the live merge (`streams.windows.WindowRecords`,
    rows of a span: stat [count, sum, late, zeros], ext [high, -low], centiles; the last
    rows are all trusts) as orjson writes `WindowRecords.dicts`: value i is
    out[voff[i]:voff[i + 1] - 1] (a newline follows each), key i kout[koff[i]:koff[i + 1]].
    Returns the number of records, or -1 when a number needs Python's float repr."""
    n_all = wn.shape[0] - 1
    n = 0
    pos = 0
    kpos = 0
    for x in range(-1, order.shape[0]):
        t = -1 if x < 0 else order[x]
        w = n_all if t < 0 else t
        base = (n_span if t < 0 else t) * 5
        spanned = t < n_span
        t0 = -1 if t < 0 else tname_off[t]
        t1 = -1 if t < 0 else tname_off[t + 1]
        responses = 0
        for cat in range(5):
            agg[:] = 0
            if spanned:
                agg[0] = stat[base + cat, 0]
                agg[1] = stat[base + cat, 1]
                agg[2] = ext[base + cat, 0]
                agg[4] = stat[base + cat, 2]
                if cat != 1:
                    responses += agg[0]
            if agg[0] == 0 and not hw[w, cat]:
                continue
            pos = _category_json(out, pos, head, 0, head.shape[0], tname, t0, t1, cat, agg,
                                 quant[base + cat] if spanned else quant[0], wn[w, cat],
                                 wl[w, cat], hw[w, cat], scratch)
            if pos < 0:
                return -1
            kpos = _key(kout, kpos, kname, t, kname_off, cat, wkey)
            n += 1
            voff[n] = pos
            koff[n] = kpos
        if not spanned:
            continue
        some = responses > 0
        for k in range(4):
            tot[k] = totals[n_span if t < 0 else t, k]
            some = some or tot[k] != 0
        tot[4] = responses
        if t >= 0 and not some:
            continue
        pos = _totals_json(out, pos, head, 0, head.shape[0], tname, t0, t1, tot)
        kpos = _key(kout, kpos, kname, t, kname_off, 5, wkey)
        n += 1
        voff[n] = pos
        koff[n] = kpos
    return n


def record_buffers(n_closes: int, text_bytes: int, n_trusts: int, npos: int) -> tuple:
    """Everything `window_records` writes into, allocated here: the kernel itself runs
    without Numba's reference counting."""
    nt1 = n_trusts + 1
    return (np.empty(text_bytes, np.uint8), np.zeros(n_closes + 1, np.int64),
            np.zeros(n_closes, np.int64), np.zeros(n_closes, np.int64),
            np.zeros(npos + 1, np.int64), np.zeros((npos >> _BLK) + 2, np.int64),
            np.zeros(npos + 1, np.int64), np.zeros((npos >> _BLK) + 2, np.int64),
            np.zeros((nt1, 5, 6), np.int64), np.zeros((nt1, 5, 3), np.float64),
            np.zeros((nt1, 6), np.int64), np.zeros((nt1, 5), np.int64),
            np.zeros((nt1, 5), np.int64), np.zeros((nt1, 5), np.bool_),
            np.zeros(nt1, np.bool_), np.zeros(1, np.float64))


@njit(cache=True, nogil=True, _nrt=False)
def window_records(comp_off, comps, head, head_off, prow_off, prows, n_trusts, trust_order,
                   tname, tname_off, ob, oms, op, ko, lb, lms, lp, la, lko,
                   tb, tko, tlb, tla, tlko, qs, reps, pbase, npos,
                   out, offs, nrec, bad, h1, b1, h2, b2, agg, quant, tot, wn, wl, hw, present,
                   scratch, keep, kagg, kquant, ktot):
    """JSON Lines of every window record of a batch of closes, as WindowStore._records and
    orjson would write them, into `out` (sized by the caller: `record_buffers`). Fills the
    per-close byte offsets `offs`, record counts `nrec` and fallback flags `bad` (a close
    flagged 1 has no text here and goes through the dict path); returns the bytes used.
    A close with keep[ci] = s >= 0 also leaves its aggregates in kagg/kquant/ktot[s] (the
    alert rules read those figures instead of parsing the text back)."""
    nc = comp_off.shape[0] - 1
    st = n_trusts
    pos = 0
    for ci in range(nc):
        _aggregate_close(comp_off[ci], comp_off[ci + 1], comps, n_trusts, ob, oms, op, ko,
                         lb, lms, lp, la, lko, tb, tko, tlb, tla, tlko, qs, reps, pbase, npos,
                         h1, b1, h2, b2, agg, quant, tot)
        s = keep[ci]
        if s >= 0:
            for t in range(n_trusts + 1):
                for cat in range(5):
                    for q in range(6):
                        kagg[s, t, cat, q] = agg[t, cat, q]
                    for q in range(3):
                        kquant[s, t, cat, q] = quant[t, cat, q]
                for q in range(6):
                    ktot[s, t, q] = tot[t, q]
        wn[:] = 0
        wl[:] = 0
        hw[:] = False
        present[:] = False
        for r in range(prow_off[ci], prow_off[ci + 1]):
            k = prows[r, 1]
            t = k >> 2
            cat = (0, 2, 3, 4)[k & 3]
            wn[t, cat] = prows[r, 2]
            wl[t, cat] = prows[r, 3]
            hw[t, cat] = True
            present[t] = True
            wn[st, cat] += prows[r, 2]
            if prows[r, 3] > wl[st, cat]:
                wl[st, cat] = prows[r, 3]
            hw[st, cat] = True
        anyp = False
        for t in range(n_trusts):
            if not present[t]:
                for cat in range(5):
                    if agg[t, cat, 0] > 0:
                        present[t] = True
                        break
                if tot[t, 5]:
                    present[t] = True
            if present[t]:
                anyp = True
        start = pos
        if anyp:
            h0 = head_off[ci]
            hl = head_off[ci + 1] - h0
            count = 0
            ok = True
            for cat in range(5):
                if agg[st, cat, 0] > 0 or hw[st, cat]:
                    pos = _category_json(out, pos, head, h0, h0 + hl, tname, -1, -1, cat,
                                         agg[st, cat], quant[st, cat], wn[st, cat],
                                         wl[st, cat], hw[st, cat], scratch)
                    if pos < 0:
                        ok = False
                        break
                    count += 1
            if ok:
                pos = _totals_json(out, pos, head, h0, h0 + hl, tname, -1, -1, tot[st])
                count += 1
                for x in range(n_trusts):
                    t = trust_order[x]
                    if not present[t]:
                        continue
                    t0 = tname_off[t]
                    t1 = tname_off[t + 1]
                    for cat in range(5):
                        if agg[t, cat, 0] > 0 or hw[t, cat]:
                            pos = _category_json(out, pos, head, h0, h0 + hl, tname, t0, t1,
                                                 cat, agg[t, cat], quant[t, cat], wn[t, cat],
                                                 wl[t, cat], hw[t, cat], scratch)
                            if pos < 0:
                                ok = False
                                break
                            count += 1
                    if not ok:
                        break
                    if tot[t, 5] or tot[t, 4] > 0:
                        pos = _totals_json(out, pos, head, h0, h0 + hl, tname, t0, t1, tot[t])
                        count += 1
            if not ok:
                bad[ci] = 1
                pos = start
                count = 0
            nrec[ci] = count
        offs[ci + 1] = pos
    return pos


@njit(cache=True, nogil=True)
def pressure_sweep(IV, to_order, KC, ends, need, j0, j1, state, active, pos, created,
                   n_keys):
    """Calls waiting for a crew at boundaries j0..j1-1 (the join's intervals replayed).

    Resumable: `state` = [next interval by start, next by end, next key creation, active
    count]. Returns int64 rows (boundary, key, calls, longest wait ms) for the boundaries
    with need[j], keys in the order the reference's dict holds them (by creation)."""
    niv = IV.shape[0]
    out = np.zeros((16, 4), np.int64)
    nout = 0
    cnt = np.zeros(n_keys, np.int64)
    mins = np.zeros(n_keys, np.int64)
    keys = np.zeros(n_keys, np.int64)
    for j in range(j0, j1):
        while state[0] < niv and IV[state[0], 2] <= j:
            i = state[0]
            if IV[i, 3] > j:
                pos[i] = state[3]
                active[state[3]] = i
                state[3] += 1
            else:
                pos[i] = -2   # opened and closed before this boundary: never seen
            state[0] += 1
        while state[1] < niv and IV[to_order[state[1]], 3] <= j:
            i = to_order[state[1]]
            p = pos[i]
            if p >= 0:
                last = active[state[3] - 1]
                active[p] = last
                pos[last] = p
                state[3] -= 1
                pos[i] = -1
            state[1] += 1
        while state[2] < KC.shape[0] and KC[state[2], 0] <= j:
            created[KC[state[2], 1]] = state[2]
            state[2] += 1
        if not need[j]:
            continue
        nk = 0
        for a in range(state[3]):
            i = active[a]
            k = IV[i, 0]
            if cnt[k] == 0:
                keys[nk] = k
                nk += 1
                mins[k] = IV[i, 1]
            elif IV[i, 1] < mins[k]:
                mins[k] = IV[i, 1]
            cnt[k] += 1
        # dict order: by creation (insertion sort, few keys)
        for a in range(1, nk):
            k = keys[a]
            b = a - 1
            while b >= 0 and created[keys[b]] > created[k]:
                keys[b + 1] = keys[b]
                b -= 1
            keys[b + 1] = k
        if nout + nk > out.shape[0]:
            bigger = np.zeros((max(out.shape[0] * 2, nout + nk), 4), np.int64)
            bigger[:nout] = out[:nout]
            out = bigger
        end = ends[j]
        for a in range(nk):
            k = keys[a]
            longest = end - mins[k]
            out[nout, 0] = j
            out[nout, 1] = k
            out[nout, 2] = cnt[k]
            out[nout, 3] = longest if longest > 0 else 0
            nout += 1
            cnt[k] = 0
    return out[:nout]


# -- outcome tables, grouped for window queries -----------------------------------------------
def _bucket_order(times: np.ndarray, bucket: int) -> np.ndarray:
    """Rows by bucket (stable; the logs are nearly in time order, which timsort likes)."""
    return np.argsort(times - times % bucket, kind="stable")


def prepare_responses(R, ends, bucket, n_keys, cat_index, table, bounds, shift):
    """Responses (stop, ms, tag|trust|category) -> on-time and late tables grouped by key
    (trust * 5 + category index) and sorted by bucket within a key: (ob, oms, op, ko) and
    (lb, lms, lp, la, lko); op/lp are sketch positions (-1 for zero). A response is late
    when a boundary had already closed its bucket when it was added (WindowStore's test)."""
    return _group_responses(R, _bucket_order(R[:, 0], bucket), ends, bucket, n_keys,
                            cat_index, table, bounds, shift)


@njit(cache=True, nogil=True)
def _group_responses(R, order, ends, bucket, n_keys, cat_index, table, bounds, shift):
    n = R.shape[0]
    nb = ends.shape[0]
    kcount = np.zeros(n_keys + 1, np.int64)
    lcount = np.zeros(n_keys + 1, np.int64)
    for i in range(n):
        packed = R[i, 2]
        tag = packed >> 32
        key = ((packed >> 3) & 0x1FFFFFFF) * 5 + cat_index[packed & 7]
        b = R[i, 0] - R[i, 0] % bucket
        if tag > 0 and nb > 0 and b < ends[tag - 1]:
            lcount[key + 1] += 1
        else:
            kcount[key + 1] += 1
    ko = np.cumsum(kcount)
    lko = np.cumsum(lcount)
    ob = np.empty(ko[n_keys], np.int64)
    oms = np.empty(ko[n_keys], np.int64)
    op = np.empty(ko[n_keys], np.int32)
    lb = np.empty(lko[n_keys], np.int64)
    lms = np.empty(lko[n_keys], np.int64)
    lp = np.empty(lko[n_keys], np.int32)
    la = np.empty(lko[n_keys], np.int64)
    fo = ko[:-1].copy()
    fl = lko[:-1].copy()
    x = np.empty(1, np.float64)
    bits = x.view(np.int64)
    for o in range(n):
        i = order[o]
        packed = R[i, 2]
        tag = packed >> 32
        key = ((packed >> 3) & 0x1FFFFFFF) * 5 + cat_index[packed & 7]
        b = R[i, 0] - R[i, 0] % bucket
        ms = R[i, 1]
        p = -1
        if ms != 0:
            x[0] = ms / 1000.0
            p = np.int64(table[(bits[0] & _ABS) >> shift])
            if x[0] > bounds[p]:
                p += 1
        if tag > 0 and nb > 0 and b < ends[tag - 1]:
            j = fl[key]
            fl[key] = j + 1
            lb[j] = b
            lms[j] = ms
            lp[j] = p
            la[j] = tag
        else:
            j = fo[key]
            fo[key] = j + 1
            ob[j] = b
            oms[j] = ms
            op[j] = p
    return ob, oms, op, ko, lb, lms, lp, la, lko


def prepare_totals(T, ends, bucket, n_keys):
    """Call totals (time, tag|trust|kind) -> on-time buckets grouped by key (trust * 4 +
    kind) and sorted, (tb, tko), and the late ones with their tags, (tlb, tla, tlko)."""
    return _group_totals(T, _bucket_order(T[:, 0], bucket), ends, bucket, n_keys)


@njit(cache=True, nogil=True)
def _group_totals(T, order, ends, bucket, n_keys):
    n = T.shape[0]
    nb = ends.shape[0]
    kcount = np.zeros(n_keys + 1, np.int64)
    lcount = np.zeros(n_keys + 1, np.int64)
    for i in range(n):
        packed = T[i, 1]
        tag = packed >> 32
        key = ((packed >> 2) & 0x3FFFFFFF) * 4 + (packed & 3)
        b = T[i, 0] - T[i, 0] % bucket
        if tag > 0 and nb > 0 and b < ends[tag - 1]:
            lcount[key + 1] += 1
        else:
            kcount[key + 1] += 1
    ko = np.cumsum(kcount)
    lko = np.cumsum(lcount)
    tb = np.empty(ko[n_keys], np.int64)
    tlb = np.empty(lko[n_keys], np.int64)
    tla = np.empty(lko[n_keys], np.int64)
    fo = ko[:-1].copy()
    fl = lko[:-1].copy()
    for o in range(n):
        i = order[o]
        packed = T[i, 1]
        tag = packed >> 32
        key = ((packed >> 2) & 0x3FFFFFFF) * 4 + (packed & 3)
        b = T[i, 0] - T[i, 0] % bucket
        if tag > 0 and nb > 0 and b < ends[tag - 1]:
            j = fl[key]
            fl[key] = j + 1
            tlb[j] = b
            tla[j] = tag
        else:
            j = fo[key]
            fo[key] = j + 1
            tb[j] = b
    return tb, ko, tlb, tla, lko
