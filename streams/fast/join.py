"""Numba kernel: the reference processor's reorder buffer, watermark and episode join, over
event columns, in one pass.

It reproduces `streams.processor.Processor.feed/advance/finish` and
`streams.episodes.EpisodeJoin` step for step: events behind the released frontier are
processed on arrival (late), the others when the frontier passes their minute bucket, in the
total order (time, type, call id, raw bytes, arrival) precomputed by the caller (`order`);
boundaries expire episodes and forget old decisions exactly as the reference does (including
its lazy queues). Instead of calling a sink it logs outcomes (responses, call totals, dead
letters) with the number of boundaries completed before them, and logs the calls waiting
for a crew as intervals, so windows and pressure can be computed afterwards in bulk."""

from __future__ import annotations

import numpy as np
from numba import njit

from streams.fast.scan import ARRIVED, FLAG, HEAR_AND_TREAT, NOT_EVENT, RECEIVED, REDIRECT, REJECT

NONE = np.int64(np.iinfo(np.int64).min)
OPEN_END = np.int64(np.iinfo(np.int32).max)
C1T_CAT = 5            # categories 1-4 are C1-C4; C1T is logged as 5
TOTAL_CALL, TOTAL_HT, TOTAL_REDIRECTED, TOTAL_REDIRECTED_C1 = range(4)
INCOMPLETE_REASONS = ("no_call_received", "no_triage", "no_crew_arrival")

# per-slot state (one slot per call that is open or remembered as decided); the latest
# triage and the first arrival are kept by value (time, code) and by record (for exact ties
# and dead letters), so the join never reads the event columns at random
G_GEN, G_FIRST, G_RECV, G_FTRI, G_TC, G_DEC, G_PEND, G_WSTART, G_TRI_TS, G_ARR_TS = range(10)
H_CID, H_TRUST, H_TRI, H_ARR, H_WKEY, H_WINT, H_PTRUST, H_TRI_CODE = range(8)
_NG, _NH = 10, 8

# scalar state
(S_NR, S_NT, S_NDL, S_NIV, S_NKC, S_NB, S_GEN, S_NSLOT, S_NFREE, S_DQH, S_DQT, S_DDH, S_DDT,
 S_DUP, S_AF, S_INCONS, S_C1WT, S_INC0, S_INC1, S_INC2, S_LATE, S_NEND) = range(22)
_NST = 22


@njit(cache=True, nogil=True)
def _grow2(a, need):
    if need <= a.shape[0]:
        return a
    b = np.zeros((max(need, a.shape[0] + a.shape[0] // 4), a.shape[1]), a.dtype)
    b[:a.shape[0]] = a
    return b


@njit(cache=True, nogil=True)
def _grow1(a, need):
    if need <= a.shape[0]:
        return a
    b = np.zeros(max(need, a.shape[0] + a.shape[0] // 4), a.dtype)
    b[:a.shape[0]] = a
    return b


@njit(cache=True, nogil=True)
def _deque_room(q, st, h, t, extra):
    """Room for `extra` more entries at the tail of ring-less deque q[head:tail]."""
    head = st[h]
    tail = st[t]
    if tail + extra <= q.shape[0]:
        return q
    live = tail - head
    if head >= q.shape[0] // 2 and live + extra <= q.shape[0]:
        for i in range(live):          # forward copy: the ranges may overlap
            q[i, 0] = q[head + i, 0]
            q[i, 1] = q[head + i, 1]
        st[h] = 0
        st[t] = live
        return q
    b = np.zeros((max(q.shape[0] * 2, live + extra), q.shape[1]), q.dtype)
    b[:live] = q[head:tail]
    st[h] = 0
    st[t] = live
    return b


@njit(cache=True, nogil=True)
def _rank(rr_idx, rr_val, e):
    """Rank of event e's raw bytes within its (time, type, call) group (0 if alone)."""
    lo = 0
    hi = rr_idx.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if rr_idx[mid] < e:
            lo = mid + 1
        else:
            hi = mid
    if lo < rr_idx.shape[0] and rr_idx[lo] == e:
        return rr_val[lo]
    return np.int64(0)


@njit(cache=True, nogil=True)
def _total(T, st, t, trust, kind):
    k = st[S_NT]
    T[k, 0] = t
    T[k, 1] = (st[S_NB] << 32) | (np.int64(trust) << 2) | kind
    st[S_NT] = k + 1


@njit(cache=True, nogil=True)
def _response(R, st, trust, cat, stop, ms):
    k = st[S_NR]
    R[k, 0] = stop
    R[k, 1] = ms
    R[k, 2] = (st[S_NB] << 32) | (np.int64(trust) << 3) | cat
    st[S_NR] = k + 1


@njit(cache=True, nogil=True)
def _stop_waiting(slot, G, H, IV, keycount, st):
    key = H[slot, H_WKEY]
    if key >= 0:
        iv = H[slot, H_WINT]
        IV[iv, 3] = st[S_NB]
        keycount[key] -= 1
        H[slot, H_WKEY] = -1


@njit(cache=True, nogil=True)
def _start_waiting(slot, key, start, G, H, IV, KC, keycount, st):
    if keycount[key] == 0:
        k = st[S_NKC]
        KC[k, 0] = st[S_NB]
        KC[k, 1] = key
        st[S_NKC] = k + 1
    keycount[key] += 1
    k = st[S_NIV]
    IV[k, 0] = key
    IV[k, 1] = start
    IV[k, 2] = st[S_NB]
    IV[k, 3] = OPEN_END
    st[S_NIV] = k + 1
    H[slot, H_WKEY] = key
    H[slot, H_WINT] = k
    G[slot, G_WSTART] = start


@njit(cache=True, nogil=True)
def _decide(slot, now, G, H, IV, keycount, DD, st):
    G[slot, G_GEN] = 0
    _stop_waiting(slot, G, H, IV, keycount, st)
    G[slot, G_DEC] = now
    k = st[S_DDT]
    DD[k, 0] = now
    DD[k, 1] = H[slot, H_CID]
    st[S_DDT] = k + 1


@njit(cache=True, nogil=True, inline="always")
def _process(e, ts, code, cid, trust, rr_idx, rr_val, connect, caps,
             cid2slot, G, H, free, DQ, DD, R, T, DL, IV, KC, keycount, st):
    """EpisodeJoin.process for event e (capacity for its outputs checked by the caller)."""
    c = cid[e]
    t = ts[e]
    cd = np.int64(code[e])
    etype = cd & 3
    slot = cid2slot[c]
    if slot < 0 or G[slot, G_GEN] == 0:
        if slot >= 0 and G[slot, G_DEC] != NONE:
            # after the decision: a late C1T, or counted as after_final
            if etype == ARRIVED and (cd & FLAG) != 0 and G[slot, G_PEND] != NONE:
                start = G[slot, G_PEND]
                G[slot, G_PEND] = NONE
                if t - start >= 0:
                    _response(R, st, H[slot, H_PTRUST], C1T_CAT, t, t - start)
                    return
            st[S_AF] += 1
            return
        if slot < 0:
            if st[S_NFREE] > 0:
                st[S_NFREE] -= 1
                slot = free[st[S_NFREE]]
            else:
                slot = st[S_NSLOT]
                st[S_NSLOT] = slot + 1
            cid2slot[c] = slot
            H[slot, H_CID] = c
            G[slot, G_DEC] = NONE
            G[slot, G_PEND] = NONE
        st[S_GEN] += 1
        G[slot, G_GEN] = st[S_GEN]
        G[slot, G_FIRST] = t
        G[slot, G_RECV] = NONE
        G[slot, G_FTRI] = NONE
        G[slot, G_TC] = NONE
        H[slot, H_TRUST] = -1
        H[slot, H_TRI] = -1
        H[slot, H_ARR] = -1
        H[slot, H_WKEY] = -1
        k = st[S_DQT]
        DQ[k, 0] = c
        DQ[k, 1] = st[S_GEN]
        st[S_DQT] = k + 1
    if etype == RECEIVED:
        if G[slot, G_RECV] != NONE:
            st[S_DUP] += 1
            if t < G[slot, G_RECV]:
                G[slot, G_RECV] = t   # a late, earlier copy: the earliest receipt counts
            return
        G[slot, G_RECV] = t
        tr = trust[e]
        H[slot, H_TRUST] = tr
        _total(T, st, t, tr, TOTAL_CALL)
        if (cd & FLAG) != 0:
            _decide(slot, t, G, H, IV, keycount, DD, st)
            _total(T, st, t, tr, TOTAL_REDIRECTED)
            return
    elif etype == ARRIVED:
        first = H[slot, H_ARR]
        if first >= 0:
            tf = G[slot, G_ARR_TS]
            if t == tf:
                rf = _rank(rr_idx, rr_val, first)
                re = _rank(rr_idx, rr_val, e)
                if re == rf:
                    st[S_DUP] += 1
                    return
                if re < rf:
                    H[slot, H_ARR] = e
            elif t < tf:
                H[slot, H_ARR] = e
                G[slot, G_ARR_TS] = t
        else:
            H[slot, H_ARR] = e
            G[slot, G_ARR_TS] = t
        if (cd & FLAG) != 0 and (G[slot, G_TC] == NONE or t < G[slot, G_TC]):
            G[slot, G_TC] = t
    else:
        latest = H[slot, H_TRI]
        if latest < 0:
            H[slot, H_TRI] = e
            H[slot, H_TRI_CODE] = cd
            G[slot, G_TRI_TS] = t
            G[slot, G_FTRI] = t
        else:
            tl = G[slot, G_TRI_TS]
            if t == tl:
                rl = _rank(rr_idx, rr_val, latest)
                re = _rank(rr_idx, rr_val, e)
                if re == rl:
                    st[S_DUP] += 1
                    return
                if re > rl:
                    H[slot, H_TRI] = e
                    H[slot, H_TRI_CODE] = cd
            elif t > tl:
                H[slot, H_TRI] = e
                H[slot, H_TRI_CODE] = cd
                G[slot, G_TRI_TS] = t
            if t < G[slot, G_FTRI]:
                G[slot, G_FTRI] = t
    # try to complete
    if G[slot, G_RECV] == NONE or H[slot, H_TRI] < 0:
        return
    tcode = np.int64(H[slot, H_TRI_CODE])
    disp = (tcode >> 5) & 3
    cat = (tcode >> 2) & 7
    tr = H[slot, H_TRUST]
    if disp == HEAR_AND_TREAT:
        _decide(slot, t, G, H, IV, keycount, DD, st)
        _total(T, st, t, tr, TOTAL_HT)
        return
    if disp == REDIRECT:
        _decide(slot, t, G, H, IV, keycount, DD, st)
        _total(T, st, t, tr, TOTAL_REDIRECTED)
        if cat == 1:
            _total(T, st, t, tr, TOTAL_REDIRECTED_C1)
        return
    recv = G[slot, G_RECV]
    if connect:
        start = recv
    else:
        capped = recv + caps[cat]
        ftri = G[slot, G_FTRI]
        start = ftri if ftri < capped else capped
    arr = H[slot, H_ARR]
    if arr < 0:
        key = tr * 4 + (cat - 1)
        if H[slot, H_WKEY] != key:
            _stop_waiting(slot, G, H, IV, keycount, st)
            _start_waiting(slot, key, start, G, H, IV, KC, keycount, st)
        elif G[slot, G_WSTART] != start:
            # same key, new clock start: a new interval, the key stays where it is
            iv = H[slot, H_WINT]
            IV[iv, 3] = st[S_NB]
            k = st[S_NIV]
            IV[k, 0] = key
            IV[k, 1] = start
            IV[k, 2] = st[S_NB]
            IV[k, 3] = OPEN_END
            st[S_NIV] = k + 1
            H[slot, H_WINT] = k
            G[slot, G_WSTART] = start
        return
    _decide(slot, t, G, H, IV, keycount, DD, st)
    stop = G[slot, G_ARR_TS]
    if stop < start:
        st[S_INCONS] += 1
        k = st[S_NDL]
        DL[k, 0] = arr
        DL[k, 1] = 1
        DL[k, 2] = start - stop
        DL[k, 3] = cat
        DL[k, 4] = c
        DL[k, 5] = st[S_NB]
        st[S_NDL] = k + 1
        return
    _response(R, st, tr, cat, stop, stop - start)
    if cat == 1:
        tc = G[slot, G_TC]
        if tc != NONE and tc >= start:
            _response(R, st, tr, C1T_CAT, tc, tc - start)
        else:
            G[slot, G_PEND] = start
            H[slot, H_PTRUST] = tr


@njit(cache=True, nogil=True)
def _expire(now, horizon, cid2slot, G, H, free, DQ, DD, IV, keycount, st):
    """EpisodeJoin.expire: release episodes past the horizon, forget old decisions."""
    while st[S_DQH] < st[S_DQT]:
        h = st[S_DQH]
        c = DQ[h, 0]
        slot = cid2slot[c]
        live = slot >= 0 and G[slot, G_GEN] == DQ[h, 1]
        if live and G[slot, G_FIRST] + horizon > now:
            break
        st[S_DQH] = h + 1
        if not live:
            continue
        G[slot, G_GEN] = 0
        if G[slot, G_RECV] == NONE:
            st[S_INC0] += 1
        elif H[slot, H_TRI] < 0:
            st[S_INC1] += 1
        else:
            st[S_INC2] += 1
        _stop_waiting(slot, G, H, IV, keycount, st)
        G[slot, G_DEC] = now
        k = st[S_DDT]
        DD[k, 0] = now
        DD[k, 1] = c
        st[S_DDT] = k + 1
    while st[S_DDH] < st[S_DDT]:
        h = st[S_DDH]
        t = DD[h, 0]
        if t + horizon > now:
            break
        st[S_DDH] = h + 1
        c = DD[h, 1]
        slot = cid2slot[c]
        if slot >= 0 and G[slot, G_DEC] == t:
            G[slot, G_DEC] = NONE
            if G[slot, G_PEND] != NONE:
                G[slot, G_PEND] = NONE
                st[S_C1WT] += 1
            if G[slot, G_GEN] == 0:
                cid2slot[c] = -1
                free[st[S_NFREE]] = slot
                st[S_NFREE] += 1


@njit(cache=True, nogil=True)
def run_join(ts, code, cid, trust, order, rr_idx, rr_val, n_cids, n_trusts,
             bucket, lateness, horizon, connect, caps, idle_ms, drain_ms, sizes):
    """The whole event-time pass. Returns (state, R, T, DL, IV, KC, ends); see the module
    docstring and `streams.fast.engine` for the layouts."""
    n = ts.shape[0]
    m = order.shape[0]
    st = np.zeros(_NST, np.int64)
    cid2slot = np.full(n_cids, -1, np.int32)
    G = np.zeros((1024, _NG), np.int64)
    H = np.zeros((1024, _NH), np.int32)
    free = np.zeros(1024, np.int32)
    DQ = np.zeros((1024, 2), np.int64)
    DD = np.zeros((1024, 2), np.int64)
    R = np.zeros((max(sizes[0], 1024), 3), np.int64)
    T = np.zeros((max(sizes[1], 1024), 2), np.int64)
    DL = np.zeros((64, 6), np.int64)
    IV = np.zeros((max(sizes[2], 1024), 4), np.int64)
    KC = np.zeros((64, 2), np.int64)
    ends = np.zeros(max(sizes[3], 1024), np.int64)
    keycount = np.zeros(max(n_trusts, 1) * 4, np.int64)

    frontier = NONE
    max_ts = NONE
    last_activity = NONE
    op = 0            # next entry of `order` not yet released or skipped
    r = 0
    finishing = False
    wm = NONE
    while True:
        # -- next arrival (or the final release) -----------------------------------------
        if not finishing:
            if r >= n:
                finishing = True
                if frontier == NONE:
                    break
                # Processor.finish: release whatever is buffered
                last_slot = NONE
                if m > 0:
                    tl = ts[order[m - 1]]
                    sl = tl - tl % bucket
                    if sl >= frontier:
                        last_slot = sl
                if last_slot == NONE:
                    break
                wm = last_slot + bucket
                cur = n - 1
            else:
                cd = code[r]
                if (cd & 3) == NOT_EVENT:
                    if cd == REJECT:
                        DL = _grow2(DL, st[S_NDL] + 1)
                        k = st[S_NDL]
                        DL[k, 0] = r
                        DL[k, 1] = 0
                        DL[k, 5] = st[S_NB]
                        st[S_NDL] = k + 1
                    r += 1
                    continue
                t = ts[r]
                if frontier == NONE:
                    f0 = t - lateness
                    frontier = f0 - f0 % bucket
                if t < frontier:
                    st[S_LATE] += 1
                    e = r
                    r += 1
                    # capacity for one event's outputs
                    if st[S_NSLOT] + 1 > G.shape[0]:
                        G = _grow2(G, st[S_NSLOT] + 1)
                        H = _grow2(H, st[S_NSLOT] + 1)
                        free = _grow1(free, G.shape[0])
                    if st[S_DQT] + 1 > DQ.shape[0]:
                        DQ = _deque_room(DQ, st, S_DQH, S_DQT, 1)
                    if st[S_DDT] + 1 > DD.shape[0]:
                        DD = _deque_room(DD, st, S_DDH, S_DDT, 1)
                    if st[S_NR] + 2 > R.shape[0]:
                        R = _grow2(R, st[S_NR] + 2)
                    if st[S_NT] + 2 > T.shape[0]:
                        T = _grow2(T, st[S_NT] + 2)
                    if st[S_NDL] + 1 > DL.shape[0]:
                        DL = _grow2(DL, st[S_NDL] + 1)
                    if st[S_NIV] + 2 > IV.shape[0]:
                        IV = _grow2(IV, st[S_NIV] + 2)
                    if st[S_NKC] + 2 > KC.shape[0]:
                        KC = _grow2(KC, st[S_NKC] + 2)
                    _process(e, ts, code, cid, trust, rr_idx, rr_val, connect, caps,
                             cid2slot, G, H, free, DQ, DD, R, T, DL, IV, KC, keycount, st)
                    continue
                cur = r
                r += 1
                if max_ts != NONE and t <= max_ts:
                    continue
                max_ts = t
                if t - lateness < frontier + bucket:
                    continue
                wm = max_ts - lateness
        # -- advance(wm): release buckets the watermark has passed ----------------------
        while frontier + bucket <= wm:
            s = frontier
            any_event = False
            while op < m:
                e = order[op]
                te = ts[e]
                sl = te - te % bucket
                if sl < s:
                    op += 1
                    continue
                if sl > s:
                    break
                op += 1
                if e > cur:
                    continue    # arrives later, behind the frontier: processed as late
                any_event = True
                if st[S_NSLOT] + 1 > G.shape[0]:
                    G = _grow2(G, st[S_NSLOT] + 1)
                    H = _grow2(H, st[S_NSLOT] + 1)
                    free = _grow1(free, G.shape[0])
                if st[S_DQT] + 1 > DQ.shape[0]:
                    DQ = _deque_room(DQ, st, S_DQH, S_DQT, 1)
                if st[S_DDT] + 1 > DD.shape[0]:
                    DD = _deque_room(DD, st, S_DDH, S_DDT, 1)
                if st[S_NR] + 2 > R.shape[0]:
                    R = _grow2(R, st[S_NR] + 2)
                if st[S_NT] + 2 > T.shape[0]:
                    T = _grow2(T, st[S_NT] + 2)
                if st[S_NDL] + 1 > DL.shape[0]:
                    DL = _grow2(DL, st[S_NDL] + 1)
                if st[S_NIV] + 2 > IV.shape[0]:
                    IV = _grow2(IV, st[S_NIV] + 2)
                if st[S_NKC] + 2 > KC.shape[0]:
                    KC = _grow2(KC, st[S_NKC] + 2)
                _process(e, ts, code, cid, trust, rr_idx, rr_val, connect, caps,
                         cid2slot, G, H, free, DQ, DD, R, T, DL, IV, KC, keycount, st)
            if any_event:
                last_activity = s
            # boundary(s + bucket)
            DD = _deque_room(DD, st, S_DDH, S_DDT, st[S_DQT] - st[S_DQH] + 1)
            _expire(s + bucket, horizon, cid2slot, G, H, free, DQ, DD, IV, keycount, st)
            ends = _grow1(ends, st[S_NB] + 1)
            ends[st[S_NB]] = s + bucket
            st[S_NB] += 1
            frontier = s + bucket
            if not any_event and last_activity != NONE and frontier - last_activity > idle_ms:
                upcoming = NONE
                k = op
                while k < m:
                    e = order[k]
                    if e <= cur:
                        te = ts[e]
                        upcoming = te - te % bucket
                        break
                    k += 1
                if upcoming == NONE:
                    upcoming = wm - wm % bucket
                if upcoming > frontier:
                    frontier = upcoming   # nothing retained: skip the empty stretch
        if finishing:
            break
    if frontier != NONE:
        # close the windows still holding data, up to the longest after the last event
        # (no rules there: the caller knows from S_NEND which boundaries these are)
        st[S_NEND] = st[S_NB]
        final = frontier + drain_ms
        final -= final % bucket
        while frontier < final:
            DD = _deque_room(DD, st, S_DDH, S_DDT, st[S_DQT] - st[S_DQH] + 1)
            _expire(frontier + bucket, horizon, cid2slot, G, H, free, DQ, DD, IV, keycount, st)
            ends = _grow1(ends, st[S_NB] + 1)
            ends[st[S_NB]] = frontier + bucket
            st[S_NB] += 1
            frontier += bucket
    # EpisodeJoin.finish: open episodes are incomplete, pending C1T closed
    for slot in range(st[S_NSLOT]):
        if G[slot, G_GEN] != 0 and cid2slot[H[slot, H_CID]] == slot:
            if G[slot, G_RECV] == NONE:
                st[S_INC0] += 1
            elif H[slot, H_TRI] < 0:
                st[S_INC1] += 1
            else:
                st[S_INC2] += 1
        if G[slot, G_PEND] != NONE and cid2slot[H[slot, H_CID]] == slot:
            st[S_C1WT] += 1
    return (st, R[:st[S_NR]], T[:st[S_NT]], DL[:st[S_NDL]], IV[:st[S_NIV]], KC[:st[S_NKC]],
            ends[:st[S_NB]])
