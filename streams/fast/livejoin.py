"""Numba kernels for the live per-partition join: `streams.partition.PartitionJoin`'s reorder
buffer and episode join with every piece of state in arrays.

The reference (`PartitionJoin` over `streams.episodes.EpisodeJoin`) keeps an `Event` per
buffered record and an `Episode` object per call; per event that is ~8 us of Python, most of
a live worker's joins process. Here a fetched chunk is one kernel call (`live_feed`: late
events joined at once, the others buffered) and a watermark is one more (`live_release`:
buckets released in the reference's order, expiry, the waiting keys' changes, outcomes
logged as rows), and the Python wrapper (`streams.fast.partjoin`) ships the rows as
`OutcomeColumns`, the same outcomes as the reference's `BucketOutcome`s.

Differences from the offline kernel (`streams.fast.join`), which sees the whole log at once:
events come by value (a record's raw bytes are copied into an arena, `RAW`, so ties in
(time, type, call) are broken on the bytes themselves, as the reference does), a call's slot
is its interned id (the wrapper interns call ids to slots and frees the slots the join
forgets), and the calls waiting for a crew are kept as counts and earliest clock starts per
(trust, category) key rather than logged as intervals. Within a bucket, events of different
calls with the same time and type are joined in slot order rather than call id order: no
outcome depends on it except the order of the join's own dead letters in a report.

Kernels run without reference counting (`_nrt=False`); the wrapper makes room in every
array before a call (bounds in `streams.fast.partjoin`), so nothing grows in here."""

from __future__ import annotations

import numpy as np
from numba import njit

from streams.fast.join import (C1T_CAT, NONE, S_AF, S_C1WT, S_DDH, S_DDT, S_DQH, S_DQT, S_DUP,
                               S_GEN, S_INC0, S_INC1, S_INC2, S_INCONS, S_LATE, S_NDL, S_NR,
                               S_NT, _NST, _response, _total)
from streams.fast.scan import ARRIVED, FLAG, HEAR_AND_TREAT, RECEIVED, REDIRECT
from streams.windows import HEAR_AND_TREAT as TOTAL_HT, REDIRECTED, REDIRECTED_C1, CALLS

# per-slot state (one slot per call that is open, remembered as decided, or buffered)
(G_GEN, G_FIRST, G_RECV, G_FTRI, G_TC, G_DEC, G_PEND, G_WSTART, G_TRI_TS, G_ARR_TS,
 G_TRI_CODE, G_TRUST, G_WKEY, G_PTRUST, G_TRI_OFF, G_TRI_LEN, G_ARR_OFF, G_ARR_LEN, G_ARR_SRC,
 G_ARR_POS, G_BUF, G_WNEXT, G_WPREV) = range(23)
NG = 23
#: a slot as the wrapper hands it out: nothing open, nothing decided, nothing buffered
FRESH_SLOT = np.zeros(NG, np.int64)
for _c in (G_DEC, G_PEND):
    FRESH_SLOT[_c] = NONE
for _c in (G_WKEY, G_TRI_OFF, G_ARR_OFF):
    FRESH_SLOT[_c] = -1

# buffered events (the reorder buffer), one row each
B_TS, B_CODE, B_SLOT, B_TRUST, B_OFF, B_LEN, B_SRC, B_POS = range(8)
NB = 8

# per (trust, category) key: calls waiting, earliest clock start (valid or to rescan), the
# touched flag, what was last sent, and the first of its waiting calls (a list through
# G_WNEXT / G_WPREV, so a rescan walks the key's calls only)
K_COUNT, K_MIN, K_VALID, K_TOUCHED, K_SENT_N, K_SENT_MIN, K_HEAD = range(7)
NK = 7

# outcome rows: bucket end, active, and [lo, hi) of its call totals, responses and waiting
O_END, O_ACTIVE, O_T0, O_T1, O_R0, O_R1, O_W0, O_W1 = range(8)
NO = 8

# dead letter rows (crew arrived before the clock start)
D_SLOT, D_CAT, D_EARLY_MS, D_OFF, D_LEN, D_SRC, D_POS = range(7)
ND = 7

# scalar state beyond the offline kernel's counters (which keep their places)
(S_OPEN, S_NBUF, S_NTOUCH, S_NW, S_NO, S_NFREED, S_T0, S_R0, S_RAW) = range(_NST, _NST + 9)
NSTATE = _NST + 9


@njit(cache=True, nogil=True, _nrt=False)
def _raw_cmp(RAW, a, na, b, nb):
    """Python's bytes comparison of RAW[a:a+na] and RAW[b:b+nb]: -1, 0 or 1."""
    n = na if na < nb else nb
    for i in range(n):
        x = RAW[a + i]
        y = RAW[b + i]
        if x != y:
            return -1 if x < y else 1
    if na == nb:
        return 0
    return -1 if na < nb else 1


@njit(cache=True, nogil=True, _nrt=False)
def _versus(t, off, ln, t_kept, off_kept, ln_kept, RAW):
    """An event's (time, raw bytes) against a kept event's: -1, 0 (a duplicate) or 1."""
    if t != t_kept:
        return -1 if t < t_kept else 1
    return _raw_cmp(RAW, off, ln, off_kept, ln_kept)


@njit(cache=True, nogil=True, _nrt=False)
def _touch(key, K, TOUCH, st):
    if K[key, K_TOUCHED] == 0:
        K[key, K_TOUCHED] = 1
        TOUCH[st[S_NTOUCH]] = key
        st[S_NTOUCH] += 1


@njit(cache=True, nogil=True, _nrt=False)
def _stop_waiting(slot, G, K, TOUCH, st):
    key = G[slot, G_WKEY]
    if key >= 0:
        _touch(key, K, TOUCH, st)
        K[key, K_COUNT] -= 1
        if K[key, K_COUNT] == 0 or G[slot, G_WSTART] == K[key, K_MIN]:
            K[key, K_VALID] = 0
        nxt = G[slot, G_WNEXT]
        prv = G[slot, G_WPREV]
        if prv >= 0:
            G[prv, G_WNEXT] = nxt
        else:
            K[key, K_HEAD] = nxt
        if nxt >= 0:
            G[nxt, G_WPREV] = prv
        G[slot, G_WKEY] = -1


@njit(cache=True, nogil=True, _nrt=False)
def _start_waiting(slot, key, start, G, K):
    G[slot, G_WKEY] = key
    G[slot, G_WSTART] = start
    head = K[key, K_HEAD]
    G[slot, G_WNEXT] = head
    G[slot, G_WPREV] = -1
    if head >= 0:
        G[head, G_WPREV] = slot
    K[key, K_HEAD] = slot
    K[key, K_COUNT] += 1
    if K[key, K_COUNT] == 1:
        K[key, K_MIN] = start
        K[key, K_VALID] = 1
    elif K[key, K_VALID] != 0 and start < K[key, K_MIN]:
        K[key, K_MIN] = start


@njit(cache=True, nogil=True, _nrt=False)
def _decide(slot, now, G, DD, K, TOUCH, st):
    G[slot, G_GEN] = 0
    st[S_OPEN] -= 1
    _stop_waiting(slot, G, K, TOUCH, st)
    G[slot, G_DEC] = now
    k = st[S_DDT]
    DD[k, 0] = now
    DD[k, 1] = slot
    st[S_DDT] = k + 1


@njit(cache=True, nogil=True, _nrt=False)
def _process(t, cd, slot, tr, off, ln, src, pos, connect, caps, G, RAW, DQ, DD, T, R, DL, K,
             TOUCH, st):
    """EpisodeJoin.process for one event, given by value."""
    etype = cd & 3
    if G[slot, G_GEN] == 0:
        if G[slot, G_DEC] != NONE:
            # after the decision: a late C1T, or counted as after_final
            if etype == ARRIVED and (cd & FLAG) != 0 and G[slot, G_PEND] != NONE:
                start = G[slot, G_PEND]
                G[slot, G_PEND] = NONE
                if t - start >= 0:
                    _response(R, st, G[slot, G_PTRUST], C1T_CAT, t, t - start)
                    return
            st[S_AF] += 1
            return
        st[S_GEN] += 1
        st[S_OPEN] += 1
        G[slot, G_GEN] = st[S_GEN]
        G[slot, G_FIRST] = t
        G[slot, G_RECV] = NONE
        G[slot, G_FTRI] = NONE
        G[slot, G_TC] = NONE
        G[slot, G_TRUST] = -1
        G[slot, G_TRI_OFF] = -1
        G[slot, G_ARR_OFF] = -1
        G[slot, G_WKEY] = -1
        k = st[S_DQT]
        DQ[k, 0] = slot
        DQ[k, 1] = st[S_GEN]
        st[S_DQT] = k + 1
    if etype == RECEIVED:
        if G[slot, G_RECV] != NONE:
            st[S_DUP] += 1
            if t < G[slot, G_RECV]:
                G[slot, G_RECV] = t   # a late, earlier copy: the earliest receipt counts
            return
        G[slot, G_RECV] = t
        G[slot, G_TRUST] = tr
        _total(T, st, t, tr, CALLS)
        if (cd & FLAG) != 0:
            _decide(slot, t, G, DD, K, TOUCH, st)
            _total(T, st, t, tr, REDIRECTED)
            return
    elif etype == ARRIVED:
        take = True
        if G[slot, G_ARR_OFF] >= 0:
            c = _versus(t, off, ln, G[slot, G_ARR_TS], G[slot, G_ARR_OFF], G[slot, G_ARR_LEN],
                        RAW)
            if c == 0:
                st[S_DUP] += 1
                return
            take = c < 0                      # the first arrival is kept
        if take:
            G[slot, G_ARR_TS] = t
            G[slot, G_ARR_OFF] = off
            G[slot, G_ARR_LEN] = ln
            G[slot, G_ARR_SRC] = src
            G[slot, G_ARR_POS] = pos
        if (cd & FLAG) != 0 and (G[slot, G_TC] == NONE or t < G[slot, G_TC]):
            G[slot, G_TC] = t
    else:
        take = True
        if G[slot, G_TRI_OFF] >= 0:
            c = _versus(t, off, ln, G[slot, G_TRI_TS], G[slot, G_TRI_OFF], G[slot, G_TRI_LEN],
                        RAW)
            if c == 0:
                st[S_DUP] += 1
                return
            take = c > 0                      # the latest triage is kept
            if t < G[slot, G_FTRI]:
                G[slot, G_FTRI] = t
        else:
            G[slot, G_FTRI] = t
        if take:
            G[slot, G_TRI_TS] = t
            G[slot, G_TRI_CODE] = cd
            G[slot, G_TRI_OFF] = off
            G[slot, G_TRI_LEN] = ln
    # try to complete
    if G[slot, G_RECV] == NONE or G[slot, G_TRI_OFF] < 0:
        return
    tcode = G[slot, G_TRI_CODE]
    disp = (tcode >> 5) & 3
    cat = (tcode >> 2) & 7
    tr = G[slot, G_TRUST]
    if disp == HEAR_AND_TREAT:
        _decide(slot, t, G, DD, K, TOUCH, st)
        _total(T, st, t, tr, TOTAL_HT)
        return
    if disp == REDIRECT:
        _decide(slot, t, G, DD, K, TOUCH, st)
        _total(T, st, t, tr, REDIRECTED_C1 if cat == 1 else REDIRECTED)
        return
    recv = G[slot, G_RECV]
    if connect:
        start = recv
    else:
        capped = recv + caps[cat]
        ftri = G[slot, G_FTRI]
        start = ftri if ftri < capped else capped
    if G[slot, G_ARR_OFF] < 0:
        key = tr * 4 + (cat - 1)
        _touch(key, K, TOUCH, st)
        if G[slot, G_WKEY] != key:
            _stop_waiting(slot, G, K, TOUCH, st)
            _start_waiting(slot, key, start, G, K)
        else:
            G[slot, G_WSTART] = start
            K[key, K_VALID] = 0
        return
    _decide(slot, t, G, DD, K, TOUCH, st)
    stop = G[slot, G_ARR_TS]
    if stop < start:
        st[S_INCONS] += 1
        k = st[S_NDL]
        DL[k, D_SLOT] = slot
        DL[k, D_CAT] = cat
        DL[k, D_EARLY_MS] = start - stop
        DL[k, D_OFF] = G[slot, G_ARR_OFF]
        DL[k, D_LEN] = G[slot, G_ARR_LEN]
        DL[k, D_SRC] = G[slot, G_ARR_SRC]
        DL[k, D_POS] = G[slot, G_ARR_POS]
        st[S_NDL] = k + 1
        return
    _response(R, st, tr, cat, stop, stop - start)
    if cat == 1:
        tc = G[slot, G_TC]
        if tc != NONE and tc >= start:
            _response(R, st, tr, C1T_CAT, tc, tc - start)
        else:
            G[slot, G_PEND] = start
            G[slot, G_PTRUST] = tr


@njit(cache=True, nogil=True, _nrt=False)
def _expire(now, horizon, G, DQ, DD, K, TOUCH, FREED, st):
    """EpisodeJoin.expire: episodes past the horizon released as incomplete, old decisions
    forgotten; a forgotten call's slot is freed unless an event of it is still buffered."""
    while st[S_DQH] < st[S_DQT]:
        h = st[S_DQH]
        slot = DQ[h, 0]
        live = G[slot, G_GEN] == DQ[h, 1]
        if live and G[slot, G_FIRST] + horizon > now:
            break
        st[S_DQH] = h + 1
        if not live:
            continue
        G[slot, G_GEN] = 0
        st[S_OPEN] -= 1
        if G[slot, G_RECV] == NONE:
            st[S_INC0] += 1
        elif G[slot, G_TRI_OFF] < 0:
            st[S_INC1] += 1
        else:
            st[S_INC2] += 1
        _stop_waiting(slot, G, K, TOUCH, st)
        G[slot, G_DEC] = now
        k = st[S_DDT]
        DD[k, 0] = now
        DD[k, 1] = slot
        st[S_DDT] = k + 1
    while st[S_DDH] < st[S_DDT]:
        h = st[S_DDH]
        t = DD[h, 0]
        if t + horizon > now:
            break
        st[S_DDH] = h + 1
        slot = DD[h, 1]
        if G[slot, G_DEC] == t:
            G[slot, G_DEC] = NONE
            if G[slot, G_PEND] != NONE:
                G[slot, G_PEND] = NONE
                st[S_C1WT] += 1
            if G[slot, G_GEN] == 0 and G[slot, G_BUF] == 0:
                FREED[st[S_NFREED]] = slot
                st[S_NFREED] += 1


@njit(cache=True, nogil=True, _nrt=False)
def _waiting_delta(G, K, TOUCH, W, st):
    """The touched keys whose (calls waiting, earliest start) differ from what was sent, as
    rows (key, calls, earliest start; 0 calls: the key is gone); an earliest start that is
    not known (its call left) is found again from the key's waiting calls."""
    for i in range(st[S_NTOUCH]):
        key = TOUCH[i]
        K[key, K_TOUCHED] = 0
        n = K[key, K_COUNT]
        if n == 0:
            if K[key, K_SENT_N] == 0:
                continue
            low = 0
        else:
            if K[key, K_VALID] == 0:
                low = np.iinfo(np.int64).max
                s = K[key, K_HEAD]
                while s >= 0:
                    if G[s, G_WSTART] < low:
                        low = G[s, G_WSTART]
                    s = G[s, G_WNEXT]
                K[key, K_MIN] = low
                K[key, K_VALID] = 1
            low = K[key, K_MIN]
            if n == K[key, K_SENT_N] and low == K[key, K_SENT_MIN]:
                continue
        k = st[S_NW]
        W[k, 0] = key
        W[k, 1] = n
        W[k, 2] = low
        st[S_NW] = k + 1
        K[key, K_SENT_N] = n
        K[key, K_SENT_MIN] = low
    st[S_NTOUCH] = 0


@njit(cache=True, nogil=True, _nrt=False)
def live_feed(n, ts, code, slot, trust, off, ln, src, pos, fresh, frontier, connect, caps,
              G, RAW, B, DQ, DD, T, R, DL, K, TOUCH, st):
    """PartitionJoin.feed for a chunk's events (in feed order): those behind the released
    frontier are joined now (late), the others buffered. `fresh`: slots just handed out."""
    for i in range(fresh.shape[0]):
        s = fresh[i]
        for c in range(NG):
            G[s, c] = FRESH_SLOT[c]
    for i in range(n):
        t = ts[i]
        if frontier != NONE and t < frontier:
            st[S_LATE] += 1
            _process(t, code[i], slot[i], trust[i], off[i], ln[i], src[i], pos[i], connect,
                     caps, G, RAW, DQ, DD, T, R, DL, K, TOUCH, st)
            continue
        k = st[S_NBUF]
        B[k, B_TS] = t
        B[k, B_CODE] = code[i]
        B[k, B_SLOT] = slot[i]
        B[k, B_TRUST] = trust[i]
        B[k, B_OFF] = off[i]
        B[k, B_LEN] = ln[i]
        B[k, B_SRC] = src[i]
        B[k, B_POS] = pos[i]
        st[S_NBUF] = k + 1
        G[slot[i], G_BUF] += 1


@njit(cache=True, nogil=True, _nrt=False)
def _sort_raw_ties(rel, B, RAW):
    """`rel` is sorted by (time, type, slot); order each run of equal keys by raw bytes."""
    m = rel.shape[0]
    i = 0
    while i < m:
        a = rel[i]
        j = i + 1
        while j < m and B[rel[j], B_TS] == B[a, B_TS] and B[rel[j], B_SLOT] == B[a, B_SLOT] \
                and (B[rel[j], B_CODE] & 3) == (B[a, B_CODE] & 3):
            j += 1
        for x in range(i + 1, j):       # insertion sort: runs are a handful of duplicates
            v = rel[x]
            y = x - 1
            while y >= i and _raw_cmp(RAW, B[v, B_OFF], B[v, B_LEN], B[rel[y], B_OFF],
                                      B[rel[y], B_LEN]) < 0:
                rel[y + 1] = rel[y]
                y -= 1
            rel[y + 1] = v
        i = j


@njit(cache=True, nogil=True, _nrt=False)
def live_release(frontier, wm, bucket, horizon, connect, caps, rel, kept, G, RAW, B,
                 DQ, DD, T, R, DL, W, OUT, K, TOUCH, FREED, st):
    """PartitionJoin.release(wm) from `frontier`: `rel` are the buffered rows before the
    watermark's bucket, sorted by (time, type, slot); `kept` how many rows stay buffered.
    Returns the new frontier; outcomes are rows of OUT."""
    _sort_raw_ties(rel, B, RAW)
    nrel = rel.shape[0]
    i = 0
    while frontier + bucket <= wm:
        end = frontier + bucket
        active = i < nrel and B[rel[i], B_TS] < end
        if active:
            while i < nrel and B[rel[i], B_TS] < end:
                r = rel[i]
                s = B[r, B_SLOT]
                G[s, G_BUF] -= 1
                _process(B[r, B_TS], B[r, B_CODE], s, B[r, B_TRUST], B[r, B_OFF], B[r, B_LEN],
                         B[r, B_SRC], B[r, B_POS], connect, caps, G, RAW, DQ, DD, T, R, DL, K,
                         TOUCH, st)
                i += 1
        elif i >= nrel and kept == 0 and st[S_OPEN] == 0 and st[S_DDH] == st[S_DDT] \
                and st[S_NT] == st[S_T0] and st[S_NR] == st[S_R0]:
            # nothing buffered, nothing open, nothing to forget: skip to the watermark
            frontier = wm - wm % bucket
            continue
        _expire(end, horizon, G, DQ, DD, K, TOUCH, FREED, st)
        w0 = st[S_NW]
        if st[S_NTOUCH] > 0:
            _waiting_delta(G, K, TOUCH, W, st)
        if active or st[S_NW] > w0 or st[S_NT] > st[S_T0] or st[S_NR] > st[S_R0]:
            k = st[S_NO]
            OUT[k, O_END] = end
            OUT[k, O_ACTIVE] = 1 if active else 0
            OUT[k, O_T0] = st[S_T0]
            OUT[k, O_T1] = st[S_NT]
            OUT[k, O_R0] = st[S_R0]
            OUT[k, O_R1] = st[S_NR]
            OUT[k, O_W0] = w0
            OUT[k, O_W1] = st[S_NW]
            st[S_NO] = k + 1
            st[S_T0] = st[S_NT]
            st[S_R0] = st[S_NR]
        frontier = end
    return frontier


@njit(cache=True, nogil=True, _nrt=False)
def compact_raw(G, nslot, B, nbuf, RAW, NEW):
    """Copy the raw bytes still referenced (buffered events, open calls' latest triage and
    first arrival) from RAW to NEW, repointing them; returns the bytes used in NEW."""
    k = 0
    for r in range(nbuf):
        o = B[r, B_OFF]
        n = B[r, B_LEN]
        for j in range(n):
            NEW[k + j] = RAW[o + j]
        B[r, B_OFF] = k
        k += n
    for s in range(nslot):
        if G[s, G_GEN] == 0:
            continue
        for col, lcol in ((G_TRI_OFF, G_TRI_LEN), (G_ARR_OFF, G_ARR_LEN)):
            o = G[s, col]
            if o >= 0:
                n = G[s, lcol]
                for j in range(n):
                    NEW[k + j] = RAW[o + j]
                G[s, col] = k
                k += n
    return k
