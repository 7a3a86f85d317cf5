"""`ColumnarPartitionJoin`: what the live worker runs per input partition; the same reports as
`streams.partition.PartitionJoin` (its reference, checked in tests/test_partjoin.py), from the
kernels of `streams.fast.livejoin`.

Per fetched chunk: each topic's run of records (`streams.fast.recordbatch.RecordRun`) is
copied into the arena and scanned there (`RecordDecoder.scan_spans`), call ids are interned
to slots in a dict, and one `live_feed` call feeds them; per watermark, one `live_release`
call. Records the scanner is not sure of go through the reference decoder, so what is
accepted and every rejection are the reference's. The state pickles as arrays (a snapshot is a few copies, not an object
graph), and given the same snapshot, chunks and watermarks it gives the same reports: the
worker's recovery redoes chunks on that."""

from __future__ import annotations

import numpy as np

from streams.events import DeadLetter, Event, decode
from streams.fast import livejoin as K
from streams.fast.join import (INCOMPLETE_REASONS, NONE, S_AF, S_C1WT, S_DDH, S_DDT, S_DQH,
                               S_DQT, S_DUP, S_INC0, S_INC1, S_INC2, S_LATE, S_NDL, S_NR, S_NT,
                               _deque_grown, _grown)
from streams.fast.recordbatch import gather
from streams.fast.records import RecordDecoder, event_code
from streams.fast.scan import PENDING, RECEIVED
from streams.outcomes import OutcomeColumns
from streams.partition import PartitionJoin
from streams.settings import ProcessingSettings
from streams.windows import CATEGORY_KEYS

_CATEGORY = (None, "C1", "C2", "C3", "C4", "C1T")
_INCOMPLETE = tuple(zip((S_INC0, S_INC1, S_INC2), INCOMPLETE_REASONS))
_TRUST_BITS = (1 << 29) - 1
#: a response's category code (`_CATEGORY`) -> its index in CATEGORY_KEYS
_CATEGORY_KEY = np.array([-1] + [CATEGORY_KEYS.index(c) for c in _CATEGORY[1:]], np.int64)
_NO_OUTCOMES = OutcomeColumns(np.zeros((0, 9), np.int64), np.zeros((0, 3), np.int64),
                              np.zeros((0, 4), np.int64), np.zeros((0, 4), np.int64), ())


def _keys(n: int) -> np.ndarray:
    keys = np.zeros((n, K.NK), np.int64)
    keys[:, K.K_HEAD] = -1                      # no call waiting
    return keys


class ColumnarPartitionJoin:
    """Reorder buffer + episode join for one co-partition of the input topics, in arrays.

    The public surface is `PartitionJoin`'s (feed a chunk, release with a watermark, the
    fields `make_report` reads), so the worker runs either; a snapshot taken before this
    existed restores as a `PartitionJoin` and carries on as one."""

    own_watermark = PartitionJoin.own_watermark

    def __init__(self, partition: int, settings: ProcessingSettings, sources: int = 3,
                 position_kind: str = "offset") -> None:
        self.partition = partition
        self.bucket_ms = settings.bucket_ms
        self.lateness_ms = settings.allowed_lateness_ms
        self.horizon_ms = settings.episode_horizon_ms
        self.max_bytes = settings.max_record_bytes
        self.connect = settings.clock == "connect"
        caps = {str(k): v for k, v in settings.arp_cap_ms.items()}
        self.caps = np.array([0, caps["C1"], caps["C2"], caps["C3"], caps["C4"], 0], np.int64)
        self.position_kind = position_kind
        self.source_max: list[int | None] = [None] * sources
        self.source_names: list[str] = [""] * sources
        self.frontier: int | None = None
        self.first_frontier: int | None = None
        self._min_ts: int | None = None
        self.events = 0
        self.dead_letters: list[DeadLetter] = []
        # interning: call id -> slot (slots of forgotten calls are handed out again)
        self.slot_of: dict[str, int] = {}
        self.call_of: list[str | None] = []
        self.free: list[int] = []
        self.trust_of: dict[str, int] = {}     # of receipts: a call's trust is its receipt's
        self.trusts: list[str] = []
        # kernel state (layouts in streams.fast.livejoin)
        self.st = np.zeros(K.NSTATE, np.int64)
        self.G = np.zeros((1024, K.NG), np.int64)
        self.B = np.zeros((4096, K.NB), np.int64)
        self.RAW = np.zeros(1 << 20, np.uint8)
        self.DQ = np.zeros((4096, 2), np.int64)
        self.DD = np.zeros((4096, 2), np.int64)
        self.T = np.zeros((1024, 2), np.int64)
        self.R = np.zeros((1024, 3), np.int64)
        self.DL = np.zeros((16, K.ND), np.int64)
        self.W = np.zeros((256, 3), np.int64)
        self.OUT = np.zeros((256, K.NO), np.int64)
        self.FREED = np.zeros(1024, np.int64)
        self.KEYS = _keys(64)
        self.TOUCH = np.zeros(64, np.int64)

    # -- snapshots -----------------------------------------------------------------------
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        st = self.st.copy()
        nslot, nbuf = len(self.call_of), int(st[K.S_NBUF])
        G, B = self.G[:nslot].copy(), self.B[:nbuf].copy()
        raw = np.zeros(int(st[K.S_RAW]), np.uint8)
        st[K.S_RAW] = K.compact_raw(G, nslot, B, nbuf, self.RAW, raw)
        state.update(st=st, G=G, B=B, RAW=raw[:st[K.S_RAW]],
                     T=self.T[:st[S_NT]].copy(), R=self.R[:st[S_NR]].copy(),
                     DQ=self.DQ[st[S_DQH]:st[S_DQT]].copy(),
                     DD=self.DD[st[S_DDH]:st[S_DDT]].copy())
        st[S_DQT] -= st[S_DQH]
        st[S_DQH] = 0
        st[S_DDT] -= st[S_DDH]
        st[S_DDH] = 0
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        for name in ("G", "B", "DQ", "DD", "T", "R"):       # room to go on
            arr = getattr(self, name)
            setattr(self, name, _grown(arr, max(2 * arr.shape[0], 1024)))
        self.RAW = _grown(self.RAW, max(2 * self.RAW.shape[0], 1 << 20))

    # -- input ---------------------------------------------------------------------------
    def feed_chunk(self, chunk: list, decoder: RecordDecoder) -> None:
        """Decode and feed one chunk: source 0, 1, 2, each a `RecordRun` in offset order (or
        None)."""
        runs = [(s, run) for s, run in enumerate(chunk) if run is not None and len(run)]
        if not runs:
            return
        # the arena is made room in (maybe compacted) before any record is given a place;
        # each run's values are copied into it end to end and scanned there
        base = self._room_for_raw(sum(run.value_bytes for _, run in runs))
        cols = []
        for s, run in runs:
            self.source_names[s] = run.topic
            self.events += len(run)
            starts = gather(run.buf, run.value_start, run.value_len, self.RAW, base)
            lens = np.maximum(run.value_len, 0)
            nbytes = int(lens.sum())
            batch = decoder.scan_spans(self.RAW[base:base + nbytes], starts - base, lens)
            cols.append(self._source_columns(s, run, batch, base))
            base += nbytes
        n = sum(len(c[0]) for c in cols)
        if not n:
            return
        ts, code, cid, trust, off, ln, src, pos = (
            x[0] if len(cols) == 1 else sum(x, []) if type(x[0]) is list else np.concatenate(x)
            for x in zip(*cols))
        slot, fresh = self._slots(cid)
        if self.frontier is None:
            low = int(ts.min())
            if self._min_ts is None or low < self._min_ts:
                self._min_ts = low
        self._room_for_events(n)
        st = self.st
        K.live_feed(n, ts, code, slot, trust, off, ln, src, pos, fresh,
                    NONE if self.frontier is None else self.frontier, self.connect, self.caps,
                    self.G, self.RAW, self.B, self.DQ, self.DD, self.T, self.R, self.DL,
                    self.KEYS, self.TOUCH, st)
        self._take_dead_letters()

    def _source_columns(self, s: int, run, batch, base: int) -> tuple:
        """One topic's scanned records (a `RecordRun`, its values at `base` in the arena):
        the unsure ones decoded in Python, rejections to dead letters. Columns of its
        events."""
        strings = batch.strings
        cids, trusts = strings[0::5], strings[1::5]
        taken = batch.codes != PENDING
        keep = None
        if not taken.all():
            keep, cids, trusts = self._slow_records(run, batch, taken, cids, trusts)
        ts, code = batch.ts, batch.codes.astype(np.int64)
        off, ln, offsets = batch.starts + base, batch.lens, run.offsets
        if keep is not None:
            ts, code, off, ln, offsets = ts[keep], code[keep], off[keep], ln[keep], \
                offsets[keep]
        if len(ts):
            high = int(ts.max())
            m = self.source_max[s]
            if m is None or high > m:
                self.source_max[s] = high
        # the join reads the trust of receipts only
        trust = np.full(len(ts), -1, np.int64)
        receipts = np.flatnonzero((code & 3) == RECEIVED).tolist()
        if receipts:
            get = self.trust_of.get
            ids = [get(trusts[i]) for i in receipts]
            if None in ids:
                ids = [self._trust(trusts[i]) for i in receipts]
            trust[receipts] = ids
        return ts, code, cids, trust, off, ln, np.full(len(ts), s, np.int64), offsets

    def _slow_records(self, run, batch, taken, cids, trusts):
        """Records the scanner left to the reference decoder: their events' code, call id
        and trust in place; rejections to dead letters. Returns the events' indexes."""
        keep: list[int] = []
        codes, ts = batch.codes, batch.ts
        out_c, out_t = [], []
        it = iter(zip(cids, trusts))
        topic = run.topic
        for i, ok in enumerate(taken.tolist()):
            if ok:
                c, t = next(it)
            else:
                raw = run.value(i)
                offset = int(run.offsets[i])
                r = decode(raw, topic, offset, self.max_bytes)
                if type(r) is not Event:
                    self.dead_letters.append(DeadLetter(r.reason, r.detail, topic, offset,
                                                        raw, "offset", self.partition,
                                                        run.key(i)))
                    continue
                codes[i] = event_code(r)
                ts[i] = r.ts
                c, t = r.call_id, r.trust or ""
            keep.append(i)
            out_c.append(c)
            out_t.append(t)
        return np.array(keep, np.int64), out_c, out_t

    def _trust(self, name: str) -> int:
        t = self.trust_of.get(name)
        if t is None:
            t = self.trust_of[name] = len(self.trusts)
            self.trusts.append(name)
            need = 4 * len(self.trusts)
            if need > self.KEYS.shape[0]:
                keys = _keys(2 * need)
                keys[:self.KEYS.shape[0]] = self.KEYS
                self.KEYS = keys
                self.TOUCH = _grown(self.TOUCH, 2 * need)
        return t

    def _slots(self, cids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Each call id's slot, handing out slots to call ids not held; (slots, new ones)."""
        get = self.slot_of.get
        slots = np.array([get(c, -1) for c in cids], np.int64)
        fresh: list[int] = []
        unknown = np.flatnonzero(slots < 0)
        if len(unknown):
            slot_of, call_of, free = self.slot_of, self.call_of, self.free
            for i in unknown.tolist():
                c = cids[i]
                v = slot_of.get(c)
                if v is None:
                    if free:
                        v = free.pop()
                        call_of[v] = c
                    else:
                        v = len(call_of)
                        call_of.append(c)
                    slot_of[c] = v
                    fresh.append(v)
                slots[i] = v
            if len(call_of) > self.G.shape[0]:
                self.G = _grown(self.G, 2 * len(call_of))
        return slots, np.array(fresh, np.int64)

    def _room_for_raw(self, n: int) -> int:
        """Room for `n` more bytes in the arena (compacted, or grown, when full); returns
        where they go, and counts them as used."""
        st = self.st
        used = int(st[K.S_RAW])
        if used + n > self.RAW.shape[0]:
            nslot, nbuf = len(self.call_of), int(st[K.S_NBUF])
            fresh = np.zeros(max(self.RAW.shape[0], 2 * n), np.uint8)
            used = K.compact_raw(self.G, nslot, self.B, nbuf, self.RAW, fresh)
            if used + n > fresh.shape[0] // 2:
                fresh = _grown(fresh, 2 * (used + n))
            self.RAW = fresh
        st[K.S_RAW] = used + n
        return used

    def _room_for_events(self, n: int) -> None:
        """Room in every array a kernel call writes for `n` more events joined or
        buffered. Bounds: an event opens at most one episode and logs at most two rows of a
        kind; an episode is decided or expired once (those open now, and those the events
        open, maybe expired in the same release)."""
        st = self.st
        self.DQ = _deque_grown(self.DQ, st, S_DQH, S_DQT, n + 1)
        self.DD = _deque_grown(self.DD, st, S_DDH, S_DDT, 2 * n + int(st[K.S_OPEN]) + 1)
        for name, used, per in (("B", K.S_NBUF, 1), ("T", S_NT, 2), ("R", S_NR, 2),
                                ("DL", S_NDL, 1)):
            arr = getattr(self, name)
            need = int(st[used]) + per * n + 1
            if need > arr.shape[0]:
                setattr(self, name, _grown(arr, max(need, 2 * arr.shape[0])))

    def _take_dead_letters(self) -> None:
        st = self.st
        k = int(st[S_NDL])
        if not k:
            return
        for slot, cat, early, off, ln, src, pos in self.DL[:k].tolist():
            category = _CATEGORY[cat]
            self.dead_letters.append(DeadLetter(
                "arrival_before_clock_start",
                f"crew arrived {early / 1000:.3f} s before the clock start of {category} "
                f"call {self.call_of[slot]}", self.source_names[src], pos,
                self.RAW[off:off + ln].tobytes(), self.position_kind))
        st[S_NDL] = 0

    @property
    def next_slot(self) -> int | None:
        nbuf = int(self.st[K.S_NBUF])
        if not nbuf:
            return None
        t = int(self.B[:nbuf, K.B_TS].min())
        return t - t % self.bucket_ms

    # -- release -------------------------------------------------------------------------
    def release(self, watermark: int | None) -> OutcomeColumns:
        """Release every bucket whose end `watermark` has passed, in event-time order; one
        outcome per bucket that changed anything the aggregator keeps."""
        if watermark is None:
            return _NO_OUTCOMES
        bucket = self.bucket_ms
        if self.frontier is None:
            if self._min_ts is None:
                self.frontier = watermark - watermark % bucket
                return _NO_OUTCOMES
            first = self._min_ts - self.lateness_ms
            self.frontier = self.first_frontier = first - first % bucket
        if self.frontier + bucket > watermark:
            return _NO_OUTCOMES
        st = self.st
        nbuf = int(st[K.S_NBUF])
        buf = self.B[:nbuf]
        limit = watermark - watermark % bucket
        before = buf[:, K.B_TS] < limit
        rel = np.flatnonzero(before)
        if len(rel):
            rows = buf[rel]
            rel = rel[np.lexsort((rows[:, K.B_SLOT], rows[:, K.B_CODE] & 3, rows[:, K.B_TS]))]
        kept = nbuf - len(rel)
        nrel = len(rel)
        self._room_for_events(nrel)
        # waiting keys touched: two per event joined, one per episode expired
        touches = 3 * nrel + int(st[K.S_OPEN]) + int(st[K.S_NTOUCH]) + 1
        for name, used, need in (("W", K.S_NW, touches), ("OUT", K.S_NO, nrel + touches + 1),
                                 ("FREED", K.S_NFREED, len(self.call_of) + 1)):
            arr = getattr(self, name)
            need += int(st[used])
            if need > arr.shape[0]:
                setattr(self, name, _grown(arr, max(need, 2 * arr.shape[0])))
        self.frontier = int(K.live_release(
            self.frontier, watermark, bucket, self.horizon_ms, self.connect, self.caps, rel,
            kept, self.G, self.RAW, self.B, self.DQ, self.DD, self.T,
            self.R, self.DL, self.W, self.OUT, self.KEYS, self.TOUCH, self.FREED, st))
        if kept < nbuf:
            self.B[:kept] = buf[~before]
            st[K.S_NBUF] = kept
        self._take_dead_letters()
        self._forget_freed()
        return self._outcomes()

    def _forget_freed(self) -> None:
        st = self.st
        k = int(st[K.S_NFREED])
        if not k:
            return
        slot_of, call_of = self.slot_of, self.call_of
        for s in self.FREED[:k].tolist():
            del slot_of[call_of[s]]
            call_of[s] = None
        self.free.extend(self.FREED[:k].tolist())
        st[K.S_NFREED] = 0

    def _outcomes(self) -> OutcomeColumns:
        """The kernel's outcome rows as `OutcomeColumns` (slices and shifts: nothing per
        call or response in Python)."""
        st = self.st
        n = int(st[K.S_NO])
        if not n:
            return _NO_OUTCOMES
        rows = self.OUT[:n]
        nt, nr, nw = int(rows[-1, K.O_T1]), int(rows[-1, K.O_R1]), int(rows[-1, K.O_W1])
        # every row logged so far went with an outcome (rows come only with joined events,
        # and a bucket that joined any has one)
        assert (nt, nr) == (st[S_NT], st[S_NR])
        buckets = np.zeros((n, 9), np.int64)
        buckets[:, :8] = rows                    # the kernel's layout, B_WHOLE 0
        code = self.T[:nt, 1]
        calls = np.empty((nt, 3), np.int64)
        calls[:, 0] = (code >> 2) & _TRUST_BITS
        calls[:, 1] = self.T[:nt, 0]
        calls[:, 2] = code & 3
        code = self.R[:nr, 2]
        responses = np.empty((nr, 4), np.int64)
        responses[:, 0] = (code >> 3) & _TRUST_BITS
        responses[:, 1] = _CATEGORY_KEY[code & 7]
        responses[:, 2:] = self.R[:nr, :2]
        key = self.W[:nw, 0]
        waiting = np.empty((nw, 4), np.int64)
        waiting[:, 0] = key >> 2
        waiting[:, 1] = key & 3
        waiting[:, 2:] = self.W[:nw, 1:]
        st[S_NT] = st[S_NR] = st[K.S_T0] = st[K.S_R0] = st[K.S_NO] = st[K.S_NW] = 0
        return OutcomeColumns(buckets, calls, responses, waiting, tuple(self.trusts))

    def counters(self) -> dict:
        st = self.st
        return {"events": self.events, "late_events": int(st[S_LATE]),
                "duplicates": int(st[S_DUP]), "after_final": int(st[S_AF]),
                "c1_without_transport": int(st[S_C1WT]),
                "incomplete": {name: int(st[i]) for i, name in _INCOMPLETE if st[i]}}
