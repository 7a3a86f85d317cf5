"""Numba kernel: the reference processor's reorder buffer, watermark and episode join, over
event columns, in one pass.

It reproduces `streams.processor.Processor.feed/advance/finish` and
`streams.episodes.EpisodeJoin` step for step: events behind the released frontier are
processed on arrival (late), the others when the frontier passes their minute bucket, in the
total order (time, type, call id, raw bytes, arrival) precomputed by the caller (`order`);
boundaries expire episodes and forget old decisions exactly as the reference does (including
its lazy queues). Instead of calling a sink it logs outcomes (responses, call totals, dead
letters) with the number of boundaries completed before them, and logs the calls waiting
for a crew as intervals, so windows and pressure can be computed afterwards in bulk.

The kernels run without Numba's reference counting (`_nrt=False`): it cost more than the
join itself. So nothing is allocated inside; `run_join` grows the arrays from Python and
resumes `join_step`, whose whole loop state lives in `st`."""

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


@njit(cache=True, nogil=True, _nrt=False)
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


@njit(cache=True, nogil=True, _nrt=False)
def _total(T, st, t, trust, kind):
    k = st[S_NT]
    T[k, 0] = t
    T[k, 1] = (st[S_NB] << 32) | (np.int64(trust) << 2) | kind
    st[S_NT] = k + 1


@njit(cache=True, nogil=True, _nrt=False)
def _response(R, st, trust, cat, stop, ms):
    k = st[S_NR]
    R[k, 0] = stop
    R[k, 1] = ms
    R[k, 2] = (st[S_NB] << 32) | (np.int64(trust) << 3) | cat
    st[S_NR] = k + 1


@njit(cache=True, nogil=True, _nrt=False)
def _stop_waiting(slot, G, H, IV, keycount, st):
    key = H[slot, H_WKEY]
    if key >= 0:
        iv = H[slot, H_WINT]
        IV[iv, 3] = st[S_NB]
        keycount[key] -= 1
        H[slot, H_WKEY] = -1


@njit(cache=True, nogil=True, _nrt=False)
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


@njit(cache=True, nogil=True, _nrt=False)
def _decide(slot, now, G, H, IV, keycount, DD, st):
    G[slot, G_GEN] = 0
    _stop_waiting(slot, G, H, IV, keycount, st)
    G[slot, G_DEC] = now
    k = st[S_DDT]
    DD[k, 0] = now
    DD[k, 1] = H[slot, H_CID]
    st[S_DDT] = k + 1


@njit(cache=True, nogil=True, _nrt=False)
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


@njit(cache=True, nogil=True, _nrt=False)
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


# resumable state of the pass (in `st` after the counters)
(S_R, S_MODE, S_FRONTIER, S_MAXTS, S_LASTACT, S_OP, S_CUR, S_WM, S_ANY, S_FINISHING,
 S_FINAL) = range(_NST, _NST + 11)
_NSTATE = _NST + 11
M_ARRIVE, M_RELEASE, M_DRAIN_INIT, M_DRAIN, M_DONE = range(5)


@njit(cache=True, nogil=True, _nrt=False)
def join_step(ts, code, cid, trust, order, rr_idx, rr_val, bucket, lateness, horizon, connect,
              caps, idle_ms, drain_ms, cid2slot, G, H, free, DQ, DD, R, T, DL, IV, KC, ends,
              keycount, st):
    """Run the pass until it ends (returns 0) or an output array needs more room (returns
    1: the caller grows it and calls again). No array is reassigned in here, which keeps
    Numba's reference counting out of the per-event loop."""
    n = ts.shape[0]
    m = order.shape[0]
    while True:
        # room for one more event and one more boundary, or back to the caller to grow
        if st[S_NSLOT] + 1 > G.shape[0] or st[S_DQT] + 1 > DQ.shape[0] \
                or st[S_DDT] + (st[S_DQT] - st[S_DQH]) + 2 > DD.shape[0] \
                or st[S_NR] + 2 > R.shape[0] or st[S_NT] + 2 > T.shape[0] \
                or st[S_NDL] + 1 > DL.shape[0] or st[S_NIV] + 2 > IV.shape[0] \
                or st[S_NKC] + 2 > KC.shape[0] or st[S_NB] + 1 > ends.shape[0]:
            return 1
        mode = st[S_MODE]
        if mode == M_ARRIVE:
            r = st[S_R]
            if r >= n:
                # Processor.finish: release whatever is buffered
                frontier = st[S_FRONTIER]
                if frontier == NONE:
                    st[S_MODE] = M_DONE
                    break
                last_slot = NONE
                if m > 0:
                    tl = ts[order[m - 1]]
                    sl = tl - tl % bucket
                    if sl >= frontier:
                        last_slot = sl
                if last_slot == NONE:
                    st[S_MODE] = M_DRAIN_INIT
                    continue
                st[S_WM] = last_slot + bucket
                st[S_CUR] = n - 1
                st[S_FINISHING] = 1
                st[S_ANY] = 0
                st[S_MODE] = M_RELEASE
                continue
            cd = code[r]
            if (cd & 3) == NOT_EVENT:
                if cd == REJECT:
                    k = st[S_NDL]
                    DL[k, 0] = r
                    DL[k, 1] = 0
                    DL[k, 5] = st[S_NB]
                    st[S_NDL] = k + 1
                st[S_R] = r + 1
                continue
            t = ts[r]
            if st[S_FRONTIER] == NONE:
                f0 = t - lateness
                st[S_FRONTIER] = f0 - f0 % bucket
            st[S_R] = r + 1
            if t < st[S_FRONTIER]:
                st[S_LATE] += 1
                _process(r, ts, code, cid, trust, rr_idx, rr_val, connect, caps,
                         cid2slot, G, H, free, DQ, DD, R, T, DL, IV, KC, keycount, st)
                continue
            st[S_CUR] = r
            if st[S_MAXTS] != NONE and t <= st[S_MAXTS]:
                continue
            st[S_MAXTS] = t
            if t - lateness < st[S_FRONTIER] + bucket:
                continue
            st[S_WM] = t - lateness
            st[S_ANY] = 0
            st[S_MODE] = M_RELEASE
            continue
        if mode == M_RELEASE:
            # advance(wm): release buckets the watermark has passed
            frontier = st[S_FRONTIER]
            if frontier + bucket > st[S_WM]:
                st[S_MODE] = M_DRAIN_INIT if st[S_FINISHING] else M_ARRIVE
                continue
            s = frontier
            cur = st[S_CUR]
            op = st[S_OP]
            found = -1
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
                found = e
                break
            st[S_OP] = op
            if found >= 0:
                st[S_ANY] = 1
                _process(found, ts, code, cid, trust, rr_idx, rr_val, connect, caps,
                         cid2slot, G, H, free, DQ, DD, R, T, DL, IV, KC, keycount, st)
                continue
            # the bucket is released: boundary(s + bucket)
            if st[S_ANY]:
                st[S_LASTACT] = s
            _expire(s + bucket, horizon, cid2slot, G, H, free, DQ, DD, IV, keycount, st)
            ends[st[S_NB]] = s + bucket
            st[S_NB] += 1
            frontier = s + bucket
            st[S_FRONTIER] = frontier
            if not st[S_ANY] and st[S_LASTACT] != NONE \
                    and frontier - st[S_LASTACT] > idle_ms:
                wm = st[S_WM]
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
                    st[S_FRONTIER] = upcoming   # nothing retained: skip the empty stretch
            st[S_ANY] = 0
            continue
        if mode == M_DRAIN_INIT:
            # close the windows still holding data, up to the longest after the last event
            # (no rules there: the caller knows from S_NEND which boundaries these are)
            st[S_NEND] = st[S_NB]
            final = st[S_FRONTIER] + drain_ms
            st[S_FINAL] = final - final % bucket
            st[S_MODE] = M_DRAIN
            continue
        if mode == M_DRAIN:
            frontier = st[S_FRONTIER]
            if frontier < st[S_FINAL]:
                _expire(frontier + bucket, horizon, cid2slot, G, H, free, DQ, DD, IV, keycount,
                        st)
                ends[st[S_NB]] = frontier + bucket
                st[S_NB] += 1
                st[S_FRONTIER] = frontier + bucket
                continue
            # EpisodeJoin.finish: open episodes are incomplete, pending C1T closed
            for slot in range(st[S_NSLOT]):
                if G[slot, G_GEN] != 0:
                    if G[slot, G_RECV] == NONE:
                        st[S_INC0] += 1
                    elif H[slot, H_TRI] < 0:
                        st[S_INC1] += 1
                    else:
                        st[S_INC2] += 1
                if G[slot, G_PEND] != NONE and cid2slot[H[slot, H_CID]] == slot:
                    st[S_C1WT] += 1
            st[S_MODE] = M_DONE
            break
        break
    return 0


def run_join(ts, code, cid, trust, order, rr_idx, rr_val, n_cids, n_trusts, bucket, lateness,
             horizon, connect, caps, idle_ms, drain_ms, sizes):
    """The whole event-time pass (join_step until done, growing outputs in between).
    Returns (state, R, T, DL, IV, KC, ends); see the module docstring and
    `streams.fast.engine` for the layouts."""
    st = np.zeros(_NSTATE, np.int64)
    for i in (S_FRONTIER, S_MAXTS, S_LASTACT, S_WM):
        st[i] = NONE
    st[S_MODE] = M_ARRIVE
    arrays = {
        "cid2slot": np.full(max(n_cids, 1), -1, np.int32),
        "G": np.zeros((1024, _NG), np.int64), "H": np.zeros((1024, _NH), np.int32),
        "free": np.zeros(1024, np.int32),
        "DQ": np.zeros((4096, 2), np.int64), "DD": np.zeros((4096, 2), np.int64),
        "R": np.zeros((max(int(sizes[0]), 1024), 3), np.int64),
        "T": np.zeros((max(int(sizes[1]), 1024), 2), np.int64),
        "DL": np.zeros((64, 6), np.int64),
        "IV": np.zeros((max(int(sizes[2]), 1024), 4), np.int64),
        "KC": np.zeros((64, 2), np.int64),
        "ends": np.zeros(max(int(sizes[3]), 1024), np.int64),
        "keycount": np.zeros(max(n_trusts, 1) * 4, np.int64),
    }
    used = {"G": S_NSLOT, "H": S_NSLOT, "free": S_NSLOT, "R": S_NR, "T": S_NT, "DL": S_NDL,
            "IV": S_NIV, "KC": S_NKC, "ends": S_NB}
    a = arrays
    while join_step(ts, code, cid, trust, order, rr_idx, rr_val, bucket, lateness, horizon,
                    connect, caps, idle_ms, drain_ms, a["cid2slot"], a["G"], a["H"], a["free"],
                    a["DQ"], a["DD"], a["R"], a["T"], a["DL"], a["IV"], a["KC"], a["ends"],
                    a["keycount"], st):
        for name, idx in used.items():
            arr = a[name]
            need = int(st[idx]) + 2
            if need > arr.shape[0]:
                a[name] = _grown(arr, max(need, arr.shape[0] + arr.shape[0] // 4))
        a["DQ"] = _deque_grown(a["DQ"], st, S_DQH, S_DQT, 1)
        a["DD"] = _deque_grown(a["DD"], st, S_DDH, S_DDT, int(st[S_DQT] - st[S_DQH]) + 2)
    return (st, a["R"][:st[S_NR]], a["T"][:st[S_NT]], a["DL"][:st[S_NDL]],
            a["IV"][:st[S_NIV]], a["KC"][:st[S_NKC]], a["ends"][:st[S_NB]])


def _grown(arr: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n,) + arr.shape[1:], arr.dtype)
    out[:arr.shape[0]] = arr
    return out


def _deque_grown(q: np.ndarray, st: np.ndarray, h: int, t: int, extra: int) -> np.ndarray:
    """q[head:tail] with room for `extra` more at the tail: compacted, or grown."""
    head, tail = int(st[h]), int(st[t])
    if tail + extra <= q.shape[0]:
        return q
    live = tail - head
    if live + extra <= q.shape[0] // 2:
        q[:live] = q[head:tail].copy()
        out = q
    else:
        out = np.zeros((max(2 * q.shape[0], 2 * (live + extra)), 2), q.dtype)
        out[:live] = q[head:tail]
    st[h] = 0
    st[t] = live
    return out
