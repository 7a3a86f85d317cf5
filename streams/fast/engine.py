"""The offline replay's columnar engine: the reference `Processor`'s answers, in bulk.

`ColumnarReplay` reads event logs (or in-memory records) into columns with the Numba scanner
(lines it is not sure about go through `streams.events.decode`), puts the events in the
reference's processing order, runs the reorder buffer, watermark and episode join as one
Numba pass (`streams.fast.join`), then closes the windows the reference would have closed,
writes the same records as JSON text (`streams.fast.windows`; dicts where the outputs need
them), evaluates the alert rules at the same boundaries on the same figures, and writes the
same dead letters in the same order. The shipped `AlertEvaluator` gets each segment of
boundaries as columns (`streams.fast.alerts`: calls waiting, latest calls, the figures of
the windows it reads) and runs its state machine only where an alert can change; any other
rules hook is called boundary by boundary with the reference's arguments. Every output is
byte-identical to `Processor` on the same input (tests/test_columnar.py compares them on
generated and hand-made logs); the reference `Processor` stays the oracle.

Memory is the event columns (21 bytes a record) plus the join's outcomes: a 10^7-event log
peaks below 800 MB (benchmarks/replay_bench.py)."""

from __future__ import annotations

import gc
import gzip
import zlib
from bisect import bisect_right
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import orjson

from streams.errors import CallstreamError
from streams.events import Category, DeadLetter, Disposition, Event, EventType, decode
from streams.fast import join as J
from streams.fast import scan as S
from streams.fast.rule_stage import InlineRules, RulesProcess, use_process
from streams.fast.windows import (prepare_responses, prepare_totals, pressure_sweep,
                                  record_buffers, window_aggregates, window_records)
from streams.processor import CategoryTotals, CollectingOutputs
from streams.settings import HOUR_MS, ProcessingSettings
from streams.sketch import _mapping
from streams.timefmt import format_ts, local_date, local_day_start, local_month_start
from streams.windows import _CALENDAR_PANE_MS, CATEGORY_KEYS, QUANTILES

_IDLE_JUMP_MS = 33 * 24 * 3_600_000          # as streams.processor
_CHUNK = 16 << 20                             # bytes read at a time
_BATCH = 1 << 18                              # records split and parsed at a time
_SEGMENT = 4096                               # boundaries emitted at a time
_CATS = tuple(Category)                       # C1..C4, code 1..4
_CAT_CODE = {Category.C1: 1, Category.C2: 2, Category.C3: 3, Category.C4: 4}
_DISP_CODE = {Disposition.DISPATCH: S.DISPATCH, Disposition.HEAR_AND_TREAT: S.HEAR_AND_TREAT,
              Disposition.REDIRECT: S.REDIRECT}
_CAT_INDEX = np.array([0, 0, 2, 3, 4, 1], np.int64)   # join category code -> CATEGORY_KEYS
_WAIT_CAT = (0, 2, 3, 4)                              # pressure key % 4 -> CATEGORY_KEYS
_MAX_ID = 1 << 29


class _Columns:
    """Per-record columns in arrival order (valid events and rejected records alike)."""

    def __init__(self, cap: int = 1 << 16) -> None:
        self.n = 0
        self.ts = np.zeros(cap, np.int64)
        self.code = np.zeros(cap, np.uint8)
        self.cid = np.zeros(cap, np.int32)
        self.trust = np.zeros(cap, np.int32)
        #: where the record's line starts in its parsed batch (`_FileSource.offset`)
        self.rel = np.zeros(cap, np.uint32)

    def trim(self) -> None:
        """Give back a large unused tail (small inputs; large ones are sized up front)."""
        if self.ts.shape[0] > self.n + self.n // 4 + 4096:
            cap = self.n + 4096
            for name in ("ts", "code", "cid", "trust", "rel"):
                setattr(self, name, getattr(self, name)[:cap].copy())

    def reserve(self, extra: int, growth: float = 1.25) -> None:
        need = self.n + extra
        cap = self.ts.shape[0]
        if need <= cap:
            return
        cap = max(need, int(cap * growth))
        for name in ("ts", "code", "cid", "trust", "rel"):
            old = getattr(self, name)
            new = np.zeros(cap, old.dtype)
            new[:self.n] = old[:self.n]
            setattr(self, name, new)


class _FileSource:
    """Where a log file's records are: record range, blank line numbers, how to re-read."""

    def __init__(self, path: Path, rec0: int) -> None:
        self.path = path
        self.name = path.name
        self.rec0 = rec0
        self.rec1 = rec0
        self.blanks: list[np.ndarray] = []
        self.gz = False
        #: (first record, stream offset of its line) per parsed batch
        self.batch_rec: list[int] = []
        self.batch_off: list[int] = []

    def offset(self, r: int, rel: int) -> int:
        """Stream offset (decompressed, for gzip) of record r's line."""
        i = bisect_right(self.batch_rec, r) - 1
        return self.batch_off[i] + rel

    def lineno(self, local: int) -> int:
        """1-based line number of the local-th record (blank lines are not records)."""
        blanks = self.blanks[0] if self.blanks else np.zeros(0, np.int64)
        k = 0
        while True:
            line = local + 1 + k
            k2 = int(np.searchsorted(blanks, line, side="right"))
            if k2 == k:
                return line
            k = k2

    def raw_lines(self, offsets: list[int], max_bytes: int) -> dict[int, bytes]:
        """The raw record at each stream offset (as `replay.iter_lines` yields it): read
        back from the file (only dead letters and exact ties need raw bytes)."""
        out: dict[int, bytes] = {}
        want = sorted(set(offsets))
        if not self.gz:
            with open(self.path, "rb") as f:
                for o in want:
                    f.seek(o)
                    out[o] = _cut_line(f.read(max_bytes + 2))
            return out
        with open(self.path, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as reader:
            base = 0
            buf = b""
            i = 0
            final = False
            while i < len(want):
                if not final:
                    data = reader.read(_CHUNK)
                    final = not data
                    buf += data
                while i < len(want) and want[i] - base < len(buf):
                    o = want[i] - base
                    nl = buf.find(b"\n", o)
                    if nl < 0 and not final:
                        break
                    out[want[i]] = _cut_line(buf[o:] if nl < 0 else buf[o:nl + 1])
                    i += 1
                if final and i < len(want):
                    raise CallstreamError(f"event log {str(self.path)!r} changed while replaying")
                keep = min(want[i] - base if i < len(want) else len(buf), len(buf))
                base += keep
                buf = buf[keep:]
        return out


def _cut_line(data: bytes) -> bytes:
    """One record from the bytes starting at it: up to the line break, without it."""
    nl = data.find(b"\n")
    if nl < 0:
        return data
    line = data[:nl]
    return line[:-1] if line[-1:] == b"\r" else line


class _MemorySource:
    """In-memory records (process_records): their sources, line numbers and bytes."""

    def __init__(self, rec0: int) -> None:
        self.rec0 = rec0
        self.rec1 = rec0
        self.raws: list[bytes] = []
        self.sources: list[str] = []
        self.linenos: list[int] = []


class ColumnarReplay:
    """One offline replay: add inputs, then `run()` writes everything and returns the summary."""

    def __init__(self, settings: ProcessingSettings, outputs=None, rules=None,
                 progress: Callable[[int, int], None] | None = None,
                 text_records: bool = True, rules_process: bool | None = None) -> None:
        """`rules_process`: evaluate batch-form rules in a second process (True), in this
        one (False), or by the input's size (None: `rule_stage.use_process`)."""
        self.settings = settings
        self.rules_process = rules_process
        self.n_events = 0
        self.text_records = text_records   # False: every window record through dicts
        self.outputs = outputs if outputs is not None else CollectingOutputs()
        self.rules = rules
        self.progress = progress
        self.cols = _Columns(1024)
        self.calls = S.Interner(1 << 16, 1 << 20)
        self.trusts = S.Interner(64, 1 << 10, 64)
        self.sources: list = []
        self.rejects: dict[int, DeadLetter] = {}
        self.max_bytes = settings.max_record_bytes
        self._starts = np.zeros(_BATCH, np.int64)
        self._ends = np.zeros(_BATCH, np.int64)
        self._linenos = np.zeros(_BATCH, np.int64)
        self._blanks = np.zeros(_BATCH, np.int64)
        self._scratch = S.scratch()
        self._cs = np.zeros(_BATCH, np.int64)          # call-id spans of a batch
        self._ce = np.zeros(_BATCH, np.int64)
        self._hs = (np.zeros(64, np.uint64), np.zeros(64, np.bool_))
        self.bytes_done = 0

    # -- input ---------------------------------------------------------------------------
    def add_file(self, path: Path) -> None:
        """Read one log (plain or gzip, by magic bytes) into the columns."""
        src = _FileSource(path, self.cols.n)
        self.sources.append(src)
        raw = open(path, "rb")
        magic = raw.read(2)
        raw.seek(0)
        src.gz = magic == b"\x1f\x8b"
        reader = gzip.GzipFile(fileobj=raw, mode="rb") if src.gz else raw
        blanks: list[np.ndarray] = []
        buf = np.empty(2 * _CHUNK, np.uint8)
        have = 0          # bytes of buf holding data
        base = 0          # stream offset of buf[0]
        out = np.zeros(4, np.int64)
        lineno = 0
        final = False
        presized = False
        cols = self.cols
        try:
            while not final:
                if have == len(buf):          # a line longer than the buffer
                    bigger = np.empty(2 * len(buf), np.uint8)
                    bigger[:have] = buf[:have]
                    buf = bigger
                want = min(len(buf), have + _CHUNK)
                try:
                    while have < want:
                        got = reader.readinto(memoryview(buf)[have:want])
                        if not got:
                            final = True
                            break
                        have += got
                except (OSError, EOFError, zlib.error) as exc:
                    raise CallstreamError(
                        f"event log {str(path)!r} could not be read past line "
                        f"{_lines_before_error(path)}: {exc}") from None
                end = S.region_end(buf, have, final)
                pos = 0
                while pos < end:
                    cap = min(_BATCH, (end - pos) // 2 + 1)    # a record takes 2+ bytes
                    cols.reserve(cap)
                    self.calls.reserve(cap, end - pos)
                    self.trusts.reserve(cap, end - pos)
                    S.parse_lines(buf, pos, end, final, self.max_bytes, lineno, cols.n,
                                  self._starts[:cap], self._ends, self._linenos, self._blanks,
                                  cols.ts, cols.code, cols.cid, cols.trust,
                                  *self.calls.arrays(), *self.trusts.arrays(), *self._scratch,
                                  out, self._cs, self._ce)
                    k, npos, lineno, nb = (int(x) for x in out)
                    S.intern_calls(buf, self._cs, self._ce, k, cols.n, cols.code, cols.cid,
                                   *self.calls.arrays(), *self._hs)
                    if nb:
                        blanks.append(self._blanks[:nb].copy())
                    if k:
                        self._batch_done(buf, k, src.name, src, base)
                        if not presized and not src.gz:
                            presized = True
                            self._presize(path.stat().st_size - base, npos - pos, k + nb,
                                          src.rec0)
                    pos = npos
                base += end
                buf[:have - end] = buf[end:have]
                have -= end
                if self.progress is not None:
                    self.progress(cols.n, self.bytes_done + raw.tell())
        finally:
            reader.close()
            raw.close()
        src.blanks = [np.concatenate(blanks)] if blanks else []
        src.rec1 = cols.n
        self.bytes_done += path.stat().st_size
        cols.trim()

    def _presize(self, size: int, sample_bytes: int, sample_lines: int, rec0: int) -> None:
        """Size the columns and the call-id table for the whole file from its first batch,
        instead of growing them (each growth copies; each table growth rehashes)."""
        lines = int(size / max(sample_bytes / max(sample_lines, 1), 1) * 1.02) + 1024
        self.cols.reserve(lines, 1.0)
        done = max(self.cols.n - rec0, 1)
        ids = len(self.calls)
        per_id = int(self.calls.meta[1]) / max(ids, 1)
        more = int(lines * min(ids / done, 1.0) * 1.1)
        self.calls.reserve(more, int(more * per_id) + (1 << 16))

    @property
    def records(self) -> int:
        """Records read so far (events and rejected lines)."""
        return self.cols.n if self.cols is not None else 0

    def add_records(self, records: Iterable[tuple[str, int, bytes]]) -> None:
        """Records given as (source, line number, raw bytes), e.g. lines held in memory."""
        src = _MemorySource(self.cols.n)
        self.sources.append(src)
        batch: list[tuple[str, int, bytes]] = []
        for rec in records:
            batch.append(rec)
            if len(batch) >= _BATCH:
                self._memory_batch(src, batch)
                batch = []
        if batch:
            self._memory_batch(src, batch)
        src.rec1 = self.cols.n

    def _memory_batch(self, src: _MemorySource, batch: list) -> None:
        raws = [r[2] for r in batch]
        lens = np.fromiter((len(r) for r in raws), np.int64, len(raws))
        k = len(raws)
        self._ends[:k] = np.cumsum(lens)
        self._starts[:k] = self._ends[:k] - lens
        self._linenos[:k] = [r[1] for r in batch]
        buf = b"".join(raws)
        sources = [r[0] for r in batch]
        # a writable copy: one set of compiled kernels serves files and memory alike
        self._parse(np.frombuffer(buf, np.uint8).copy(), k, sources)
        src.raws.extend(raws)
        src.sources.extend(sources)
        src.linenos.extend(r[1] for r in batch)

    def _parse(self, arr: np.ndarray, k: int, sources: list[str]) -> None:
        """In-memory records (spans in _starts/_ends) to columns."""
        cols = self.cols
        cols.reserve(k)
        nbytes = int(self._ends[k - 1] - self._starts[0])
        self.calls.reserve(k, nbytes)
        self.trusts.reserve(k, nbytes)
        S.parse_records(arr, self._starts, self._ends, k, cols.n, self.max_bytes,
                        cols.ts, cols.code, cols.cid, cols.trust,
                        *self.calls.arrays(), *self.trusts.arrays(), *self._scratch)
        self._batch_done(arr, k, sources, None, 0)

    def _batch_done(self, arr: np.ndarray, k: int, source, src, base: int) -> None:
        """After a kernel filled k records: offsets, the Python-decoded lines, the count."""
        cols = self.cols
        r0 = cols.n
        if src is not None:
            first = int(self._starts[0])
            if int(self._ends[k - 1]) - first >= 1 << 32:
                raise CallstreamError(f"event log {str(src.path)!r} has a line over 4 GiB")
            src.batch_rec.append(r0)
            src.batch_off.append(base + first)
            cols.rel[r0:r0 + k] = self._starts[:k] - first
        pending = np.flatnonzero(cols.code[r0:r0 + k] == S.PENDING)
        starts, ends, linenos = self._starts, self._ends, self._linenos
        for i in pending.tolist():
            raw = arr[starts[i]:ends[i]].tobytes()
            name = source if isinstance(source, str) else source[i]
            self._slow(r0 + i, raw, name, int(linenos[i]))
        cols.n = r0 + k
        if len(self.calls) >= _MAX_ID or len(self.trusts) >= _MAX_ID:
            raise CallstreamError("too many distinct call ids or trusts for one offline replay")

    def _slow(self, r: int, raw: bytes, source: str, lineno: int) -> None:
        """A line the scanner left alone: the reference decoder decides."""
        cols = self.cols
        res = decode(raw, source, lineno, self.max_bytes)
        if type(res) is not Event:
            cols.code[r] = S.REJECT
            self.rejects[r] = DeadLetter(res.reason, res.detail, source, lineno, raw, "line")
            return
        code = int(res.type)
        if res.type is EventType.CALL_RECEIVED:
            if res.answered_by != res.trust:
                code |= S.FLAG
        elif res.type is EventType.TRIAGED:
            code |= (_CAT_CODE[res.category] if res.category is not None else 0) << 2
            code |= _DISP_CODE[res.disposition] << 5
        elif res.transport_capable:
            code |= S.FLAG
        cols.ts[r] = res.ts
        cols.code[r] = code
        cols.cid[r] = self.calls.intern(res.call_id.encode("utf-8", "surrogatepass"))
        cols.trust[r] = (-1 if res.trust is None
                         else self.trusts.intern(res.trust.encode("utf-8", "surrogatepass")))

    # -- where a record came from ------------------------------------------------------------
    def _source_of(self, r: int):
        for src in self.sources:
            if src.rec0 <= r < src.rec1:
                return src
        raise AssertionError(r)  # pragma: no cover

    def _positions(self, recs: list[int]) -> dict[int, tuple[str, int, bytes]]:
        """(source name, line number, raw bytes) of each record."""
        out: dict[int, tuple[str, int, bytes]] = {}
        by_src: dict[int, list[int]] = {}
        for r in recs:
            src = self._source_of(r)
            by_src.setdefault(id(src), []).append(r)
        for src in self.sources:
            mine = by_src.get(id(src))
            if not mine:
                continue
            if isinstance(src, _MemorySource):
                for r in mine:
                    i = r - src.rec0
                    out[r] = (src.sources[i], src.linenos[i], src.raws[i])
            else:
                offs = {r: src.offset(r, int(self.cols.rel[r])) for r in mine}
                raws = src.raw_lines(list(offs.values()), self.max_bytes)
                for r in mine:
                    out[r] = (src.name, src.lineno(r - src.rec0), raws[offs[r]])
        return out

    # -- processing order -------------------------------------------------------------------
    def _order(self):
        """Events in the reference's release order (time, type, call id, raw bytes, arrival)
        and, for events sharing (time, type, call id), the rank of their raw bytes."""
        cols = self.cols
        n = cols.n
        key = _sort_keys(cols.ts[:n], cols.code[:n])
        o = np.argsort(key, kind="stable")
        m = int(np.count_nonzero((cols.code[:n] & 3) != S.NOT_EVENT))
        order = o[:m].astype(np.int32)
        del o
        runs = _tie_runs(order, key)
        del key
        rr: dict[int, int] = {}
        if len(runs):
            cid = cols.cid
            need: list[int] = []
            for a, b in runs.tolist():
                members = order[a:b].tolist()
                seen: dict[int, int] = {}
                for e in members:
                    c = int(cid[e])
                    seen[c] = seen.get(c, 0) + 1
                need.extend(e for e in members if seen[int(cid[e])] > 1)
            raws = {r: p[2] for r, p in self._positions(need).items()} if need else {}
            names: dict[int, bytes] = {}
            for a, b in runs.tolist():
                members = order[a:b].tolist()
                keys = []
                for e in members:
                    c = int(cid[e])
                    name = names.get(c)
                    if name is None:
                        name = names[c] = self.calls.get(c)
                    keys.append((name, raws.get(e, b""), e))
                keys.sort()
                order[a:b] = [k[2] for k in keys]
                # raw ranks within each (time, type, call id) group
                g = 0
                while g < len(keys):
                    h = g
                    while h < len(keys) and keys[h][0] == keys[g][0]:
                        h += 1
                    rank = 0
                    for x in range(g, h):
                        if x > g and keys[x][1] != keys[x - 1][1]:
                            rank += 1
                        if rank:
                            rr[keys[x][2]] = rank
                    g = h
        rr_idx = np.array(sorted(rr), np.int64)
        rr_val = np.array([rr[i] for i in rr_idx.tolist()], np.int64)
        return order, rr_idx, rr_val

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> dict:
        """Process everything added; write the outputs; return the summary."""
        enabled = gc.isenabled()
        gc.disable()          # few objects, no cycles: the collector would only rescan
        try:
            return self._run()
        finally:
            if enabled:
                gc.enable()

    def _run(self) -> dict:
        st = self.settings
        cols = self.cols
        n = self.n_events = cols.n
        self.calls.release_table()
        order, rr_idx, rr_val = self._order()
        caps = {str(k): v for k, v in st.arp_cap_ms.items()}
        cap_arr = np.array([0, caps["C1"], caps["C2"], caps["C3"], caps["C4"], 0], np.int64)
        longest = max([w.size_ms for w in st.windows] + [st.bucket_ms])
        drain = max(longest, 25 * HOUR_MS) if st.calendar else longest
        n_trusts = len(self.trusts)
        types = np.bincount(cols.code[:n] & 3, minlength=4)
        events = cols.ts[:n][(cols.code[:n] & 3) != S.NOT_EVENT]
        span = int(events.max() - events.min()) if len(events) else 0
        del events
        sizes = np.array([types[S.ARRIVED] * 4 // 5, types[S.RECEIVED] * 11 // 10
                          + types[S.TRIAGED] // 4, types[S.TRIAGED] * 4 // 5,
                          (span + drain) // st.bucket_ms + 16], np.int64)
        state, R, T, DL, IV, KC, ends = J.run_join(
            cols.ts[:n], cols.code[:n], cols.cid[:n], cols.trust[:n], order, rr_idx, rr_val,
            len(self.calls), n_trusts, st.bucket_ms, st.allowed_lateness_ms,
            st.episode_horizon_ms, st.clock == "connect", cap_arr, _IDLE_JUMP_MS, drain, sizes)
        del order
        letters = self._dead_letters(DL)
        trust_names = self.trusts.strings()
        self.cols = None      # the columns are not needed any more
        del cols
        outcomes = [R, T]
        del R, T
        emitter = _Emitter(self, state, outcomes, IV, KC, ends, trust_names)
        emitter.emit(letters, DL[:, 5] if len(DL) else np.zeros(0, np.int64))
        return emitter.summary(n, letters)

    def _dead_letters(self, DL: np.ndarray) -> list[DeadLetter]:
        """Dead letters in processing order: rejected records and inconsistent arrivals."""
        rows = DL.tolist()
        where = self._positions([row[0] for row in rows if row[1] == 1])
        out = []
        for rec, kind, delta, cat, c, _tag in rows:
            if kind == 0:
                out.append(self.rejects[rec])
                continue
            source, lineno, raw = where[rec]
            call_id = self.calls.get(c).decode("utf-8", "surrogatepass")
            out.append(DeadLetter(
                "arrival_before_clock_start",
                f"crew arrived {delta / 1000:.3f} s before the clock start of "
                f"{_CATS[cat - 1]} call {call_id}", source, lineno, raw, "line"))
        return out


def _lines_before_error(path: Path) -> int:
    """The line number the reference reader reports for an unreadable log (error path only)."""
    from streams.replay import iter_lines
    last = 0
    try:
        for last, _ in iter_lines(path):
            pass
    except CallstreamError as exc:
        text = str(exc)
        marker = "past line "
        if marker in text:
            return int(text.split(marker, 1)[1].split(":", 1)[0])
    return last


class _Pressure:
    """The rules' `pressure()` at one boundary: (trust, category) -> (calls waiting, longest
    wait ms), built on first call (most boundaries only need it for a threshold check)."""

    __slots__ = ("rows", "lo", "hi", "keys", "value")

    def __init__(self, rows: np.ndarray, lo: int, hi: int, keys: list) -> None:
        self.rows, self.lo, self.hi, self.keys, self.value = rows, lo, hi, keys, None

    def __call__(self) -> dict:
        if self.value is None:
            keys = self.keys
            self.value = {keys[k]: (w, lw)
                          for _, k, w, lw in self.rows[self.lo:self.hi].tolist()}
        return self.value


class _Emitter:
    """Window records, pressure, rules and dead letters, boundary by boundary."""

    def __init__(self, replay: ColumnarReplay, state, outcomes: list, IV, KC, ends,
                 trust_names):
        st = replay.settings
        self.replay = replay
        self.settings = st
        self.outputs = replay.outputs
        self.rules = replay.rules
        self.state = state
        self.ends = ends
        self.trust_names = trust_names
        self.n_trusts = len(trust_names)
        self.bucket = st.bucket_ms
        self.stats_records = 0
        self.alert_records = 0
        self.ends_index = {e: j for j, e in enumerate(ends.tolist())}
        order = sorted(range(self.n_trusts), key=lambda t: trust_names[t])
        self.rank = {t: i for i, t in enumerate(order)}
        self.trust_order = np.array(order, np.int64)
        names_json = [orjson.dumps(t) for t in trust_names]
        self.tname = np.frombuffer(b"".join(names_json) or b"\0", np.uint8)
        self.tname_off = np.cumsum([0] + [len(x) for x in names_json]).astype(np.int64)
        self._prepare_outcomes(*outcomes)
        outcomes.clear()          # the logs go; the grouped tables stay
        self.IV = IV
        self.KC = KC

    # -- outcomes -------------------------------------------------------------------------------
    def _prepare_outcomes(self, R: np.ndarray, T: np.ndarray) -> None:
        """Group the join's outcome logs for window queries (and take the summary's totals
        and, with rules, each trust's latest call) so the logs themselves can go."""
        st = self.settings
        nk = max(self.n_trusts, 1)
        m = _mapping(float(st.relative_accuracy))
        self.mapping = m
        (self.ob, self.oms, self.op, self.ko, self.lb, self.lms, self.lp, self.la,
         self.lko) = prepare_responses(R, self.ends, self.bucket, nk * 5, _CAT_INDEX, m.table,
                                       m.bounds, np.int64(m.shift))
        pos = np.concatenate((self.op[self.op >= 0], self.lp[self.lp >= 0]))
        self.pbase = int(pos.min()) if len(pos) else 0
        self.npos = (int(pos.max()) - self.pbase + 1) if len(pos) else 1
        del pos
        self.late_responses = len(self.lb)
        kinds = T[:, 1] & 3
        self.totals = [int(np.count_nonzero(kinds == k)) for k in range(3)]
        if self.rules is not None:
            self.changes = _last_call_changes(T, _MAX_ID - 1, nk)
        del kinds
        self.tb, self.tko, self.tlb, self.tla, self.tlko = prepare_totals(
            T, self.ends, self.bucket, nk * 4)
        self._calendar()
        self.too_late = self._too_late((self.lb, self.la), (self.tlb, self.tla))

    def category_values(self, c: int) -> np.ndarray:
        """Every response time (ms) of category index c, all trusts, on time or late."""
        parts = []
        for t in range(self.n_trusts):
            k = t * 5 + c
            parts.append(self.oms[self.ko[k]:self.ko[k + 1]])
            parts.append(self.lms[self.lko[k]:self.lko[k + 1]])
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    # -- which windows close where ---------------------------------------------------------
    def _calendar(self) -> None:
        """Simulate WindowStore's calendar: the midnights it closes, the days it keeps."""
        st = self.settings
        self.cal_closes: dict[int, list] = {}
        self.day_built: dict[int, int] = {}      # day start -> boundary it was built at
        self.day_deleted: dict[int, int] = {}    # day start -> boundary it was dropped at
        if not st.calendar or not len(self.ends):
            return
        tz = st.tz
        ends = self.ends.tolist()
        next_midnight = local_day_start(ends[0], tz)
        if next_midnight < ends[0]:
            next_midnight = local_day_start(next_midnight + 36 * HOUR_MS, tz)
        days: dict[int, tuple[int, int]] = {}    # day start -> (end, boundary)
        for j, E in enumerate(ends):
            if E != next_midnight:
                continue
            day_start = local_day_start(E - 1, tz)
            days[day_start] = (E, j)
            self.day_built[day_start] = j
            label = local_date(day_start, tz)
            closes = []
            if "day" in st.calendar:
                closes.append(("day", day_start, E, label,
                               [(lo, hi, -1, j, 1) for lo, hi in
                                self._built(day_start, E, _CALENDAR_PANE_MS, j)]))
            if "mtd" in st.calendar:
                month_start = local_month_start(E - 1, tz)
                comps = []
                for s in sorted(days):
                    if s < month_start:
                        continue
                    de, jd = days[s]
                    comps.extend((lo, hi, -1, jd, 1)
                                 for lo, hi in self._built(s, de, _CALENDAR_PANE_MS, jd))
                    if jd < j:
                        comps.append((s, de, jd, j, 0))
                closes.append(("mtd", month_start, E, label, comps))
                for s in [s for s in days if s < month_start]:
                    del days[s]
                    self.day_deleted[s] = j
            self.cal_closes[j] = closes
            next_midnight = local_day_start(E + 36 * HOUR_MS, tz)

    def _keep(self, size: int) -> int:
        ws = self.settings.windows
        retention = max([w.size_ms for w in ws] + [HOUR_MS]) + HOUR_MS
        return retention if size != _CALENDAR_PANE_MS else 26 * HOUR_MS

    def _built(self, lo: int, hi: int, size: int, j: int) -> list[tuple[int, int]]:
        """Ranges of the panes of `size` in [lo, hi) that exist at boundary j (built when
        their end was a boundary, not yet forgotten), merged."""
        ends_index = self.ends_index
        keep = self._keep(size)
        prev = self.ends[j - 1] if j > 0 else None
        out: list[list[int]] = []
        for q in range(lo, hi, size):
            jq = ends_index.get(q + size)
            if jq is None or jq > j or (prev is not None and q < prev - keep):
                continue
            if out and out[-1][1] == q:
                out[-1][1] = q + size
            else:
                out.append([q, q + size])
        return [(a, b) for a, b in out]

    def _window_closes(self, j0: int, j1: int) -> list[tuple[int, str, int, int, str | None, list]]:
        """(boundary, window, start, end, date, components) of every window closing at
        boundaries j0..j1-1, in the reference's order."""
        out = []
        ends = self.ends
        B = self.bucket
        wins = self.settings.windows
        for j in range(j0, j1):
            E = int(ends[j])
            for w in wins:
                if E % w.every_ms:
                    continue
                lo = E - w.size_ms
                if w.every_ms == B:
                    comps = [(lo, E, -1, j, 1)]
                else:
                    comps = [(a, b, -1, j, 1) for a, b in self._built(lo, E, w.every_ms, j)]
                out.append((j, w.name, lo, E, None, comps))
            for name, start, E2, label, comps in self.cal_closes.get(j, ()):
                out.append((j, name, start, E2, label, comps))
        return out

    def _too_late(self, late_r, late_t) -> int:
        """Late outcomes that found no bucket, pane or day to go into (WindowStore.too_late)."""
        st = self.settings
        B = self.bucket
        ends = self.ends
        pane_sizes = sorted({w.every_ms for w in st.windows if w.every_ms != B}
                            | ({_CALENDAR_PANE_MS} if st.calendar else set()))
        keep_b = max([w.size_ms for w in st.windows if w.every_ms == B]
                     + pane_sizes + [0]) + B
        tz = st.tz
        n = 0
        day_cache: dict[int, int] = {}
        for bs, tags in (late_r, late_t):
            for b, a in zip(bs.tolist(), tags.tolist()):
                c = int(ends[a - 1])
                if b >= c - keep_b:
                    continue
                found = False
                for size in pane_sizes:
                    q = b - b % size
                    jq = self.ends_index.get(q + size)
                    if jq is not None and jq <= a - 1 and q >= c - self._keep(size):
                        found = True
                        break
                if found:
                    continue
                if self.day_built:
                    ds = day_cache.get(b)
                    if ds is None:
                        ds = day_cache[b] = local_day_start(b, tz)
                    jd = self.day_built.get(ds)
                    jdel = self.day_deleted.get(ds)
                    if jd is not None and jd <= a - 1 and (jdel is None or a - 1 < jdel):
                        continue
                n += 1
        return n

    # -- output ---------------------------------------------------------------------------------
    def emit(self, letters: list[DeadLetter], letter_tags: np.ndarray) -> None:
        """Write stats, dead letters and alerts in the reference's order, boundary by
        boundary, calling the rules where the reference calls them. Rules that take the
        batch form (`AlertEvaluator.evaluate_batch`) get each segment's boundaries at once
        as columns (`streams.fast.rule_stage`: in process, or in a second one on a large
        replay); any other hook is called boundary by boundary."""
        rules = self.rules
        n_rule = int(self.state[J.S_NEND]) if rules is not None else 0
        if rules is None or not hasattr(rules, "evaluate_batch"):
            self._emit(letters, letter_tags, rules, n_rule)
            return
        args = (rules, self.IV, self.changes, self.ends, self.trust_names, n_rule)
        stage = None
        if hasattr(rules, "adopt") and use_process(self.replay.n_events,
                                                   self.replay.rules_process):
            try:
                stage = RulesProcess(*args, self._write_alerts)
            except OSError:
                stage = None            # no fork possible now: the rules run here instead
        if stage is None:
            stage = InlineRules(*args, self._emit_alert)
        try:
            # no per-boundary calls: the stage takes the segments
            self._emit(letters, letter_tags, None, 0, stage, n_rule, rules.windows_read)
            stage.finish()
        finally:
            stage.close()

    def _emit(self, letters: list[DeadLetter], letter_tags: np.ndarray, rules, n_rule: int,
              stage=None, n_batch: int = 0, windows_read: frozenset = frozenset()) -> None:
        """`emit`'s loop: `rules` called at each boundary below `n_rule`, or `stage` given
        each segment with the closes of `windows_read` below `n_batch` captured."""
        outputs = self.outputs
        ends = self.ends
        nb = len(ends)
        tags = letter_tags.tolist()
        dl = 0
        nl = len(letters)
        dead_letter = outputs.dead_letter
        stats_lines = getattr(outputs, "stats_lines", None)
        stats = outputs.stats
        loads = orjson.loads
        # pressure: the join's waiting intervals replayed
        IV = self.IV
        to_order = np.argsort(IV[:, 3], kind="stable") if len(IV) else np.zeros(0, np.int64)
        sweep_state = np.zeros(4, np.int64)
        active = np.zeros(max(len(IV), 1), np.int64)
        pos = np.full(max(len(IV), 1), -1, np.int64)
        n_keys = max(self.n_trusts * 4, 1)
        created = np.zeros(n_keys, np.int64)
        key_objs = [(self.trust_names[k // 4], _CATS[k % 4]) for k in range(self.n_trusts * 4)]
        last_call: dict[str, int] = {}
        changes_l = self.changes.tolist() if rules is not None else []
        ch = 0
        nch = len(changes_l)
        need = np.zeros(nb, np.bool_)
        need[:n_rule] = True
        for j0 in range(0, nb, _SEGMENT):
            j1 = min(nb, j0 + _SEGMENT)
            closes = self._window_closes(j0, j1)
            for c in closes:
                need[c[0]] = True
            prows = pressure_sweep(IV, to_order, self.KC, ends, need, j0, j1, sweep_state,
                                   active, pos, created, n_keys)
            pj = prows[:, 0]
            capture = _Capture.keeping(closes, n_batch, windows_read, self.n_trusts) \
                if stage is not None else None
            texts = self._texts(closes, prows, pj, capture)
            ci = 0
            ncl = len(closes)
            js = np.flatnonzero(need[j0:j1]) + j0
            lo = np.searchsorted(pj, js, side="left").tolist()
            hi = np.searchsorted(pj, js, side="right").tolist()
            end_ms = ends[js].tolist()
            for x, j in enumerate(js.tolist()):
                while dl < nl and tags[dl] <= j:
                    dead_letter(letters[dl])
                    dl += 1
                records = None
                if ci < ncl and closes[ci][0] == j:
                    parts = []
                    count = 0
                    while ci < ncl and closes[ci][0] == j:
                        text, n = texts[ci]
                        parts.append(text)
                        count += n
                        ci += 1
                    if count:
                        chunk = b"".join(parts)
                        self.stats_records += count
                        if stats_lines is not None:
                            stats_lines(chunk)
                            if j < n_rule:
                                records = [loads(line) for line in chunk.splitlines()]
                        else:
                            records = [loads(line) for line in chunk.splitlines()]
                            for rec in records:
                                stats(rec)
                if j < n_rule:
                    while ch < nch and changes_l[ch][0] <= j:
                        _, t, v = changes_l[ch]
                        last_call[self.trust_names[t]] = v
                        ch += 1
                    rules.evaluate(end_ms[x], records if records is not None else [],
                                   _Pressure(prows, lo[x], hi[x], key_objs), last_call,
                                   self._emit_alert)
            if stage is not None:
                stage.submit(j0, j1, *capture.slots(closes))
        while dl < nl:
            dead_letter(letters[dl])
            dl += 1

    def _emit_alert(self, record: dict) -> None:
        self.alert_records += 1
        self.outputs.alert(record)

    def _write_alerts(self, lines: bytes, count: int) -> None:
        """Alert records already serialised (`alert_line`), from the rules' process."""
        self.alert_records += count
        alert_lines = getattr(self.outputs, "alert_lines", None)
        if alert_lines is not None:
            alert_lines(lines)
        else:
            for line in lines.splitlines():
                self.outputs.alert(orjson.loads(line))

    def _texts(self, closes: list, prows: np.ndarray, pj: np.ndarray, capture=None) -> list:
        """(JSON Lines bytes, record count) of each close; with a `_Capture`, the closes it
        keeps also leave their aggregates there."""
        if not closes:
            return []
        if capture is None:
            capture = _Capture.none(len(closes), self.n_trusts)
        comp_off = np.zeros(len(closes) + 1, np.int64)
        flat = []
        heads = []
        prow_off = np.zeros(len(closes) + 1, np.int64)
        for i, c in enumerate(closes):
            flat.extend(c[5])
            comp_off[i + 1] = len(flat)
            heads.append(self._head(c))
        js = np.array([c[0] for c in closes], np.int64)
        lo = np.searchsorted(pj, js, side="left")
        hi = np.searchsorted(pj, js, side="right")
        prow_sel = np.concatenate([prows[a:b] for a, b in zip(lo.tolist(), hi.tolist())]) \
            if len(prows) else np.zeros((0, 4), np.int64)
        prow_off[1:] = np.cumsum(hi - lo)
        head_off = np.cumsum([0] + [len(h) for h in heads]).astype(np.int64)
        head = np.frombuffer(b"".join(heads), np.uint8)
        comps = np.array(flat, np.int64).reshape(-1, 5)
        longest_head = max(len(h) for h in heads)
        longest_name = int(np.diff(self.tname_off).max()) if self.n_trusts else 0
        per_close = (self.n_trusts + 1) * 6 * (longest_head + longest_name + 400)
        bufs = record_buffers(len(closes), per_close * len(closes), self.n_trusts, self.npos)
        used = window_records(
            comp_off, comps, head, head_off, prow_off, prow_sel.reshape(-1, 4), self.n_trusts,
            self.trust_order, self.tname, self.tname_off, *self._outcome_arrays(), *bufs,
            capture.keep, capture.agg, capture.quant, capture.tot)
        offs = bufs[1].tolist()
        nrec = bufs[2].tolist()
        bad = bufs[3]
        data = bufs[0][:used].tobytes()
        out = [(data[offs[i]:offs[i + 1]], nrec[i]) for i in range(len(closes))]
        if not self.replay.text_records:
            bad[:] = 1
        for i in np.flatnonzero(bad).tolist():
            recs = self._records_py(closes[i], comps[comp_off[i]:comp_off[i + 1]],
                                    prow_sel[prow_off[i]:prow_off[i + 1]].tolist())
            out[i] = (b"".join(orjson.dumps(r) + b"\n" for r in recs), len(recs))
        return out

    def _outcome_arrays(self):
        m = self.mapping
        return (self.ob, self.oms, self.op, self.ko, self.lb, self.lms, self.lp, self.la,
                self.lko, self.tb, self.tko, self.tlb, self.tla, self.tlko,
                np.array(QUANTILES, np.float64), m.reps, np.int64(self.pbase),
                np.int64(self.npos))

    def _head(self, close) -> bytes:
        """`{"window":..,"start":..,"end":..[,"date":..]` of a close's records."""
        _, name, start, end, date, _ = close
        head = {"window": name, "start": _fmt(start), "end": _fmt(end)}
        if date is not None:
            head["date"] = date
        return orjson.dumps(head)[:-1]

    def _records_py(self, close, comps: np.ndarray, prows: list) -> list[dict]:
        """The dict path (numbers beyond the text writer's range): WindowStore._records."""
        comp_off = np.array([0, len(comps)], np.int64)
        agg, quant, tot = window_aggregates(comp_off, np.ascontiguousarray(comps),
                                            self.n_trusts, *self._outcome_arrays())
        agg, quant, tot = agg[0].tolist(), quant[0].tolist(), tot[0].tolist()
        _, name, start, end, date, _ = close
        nt = self.n_trusts
        names = self.trust_names
        waits: dict[tuple[int, int], tuple[int, int]] = {}
        wait_all: dict[int, tuple[int, int]] = {}
        present = set()
        for _, k, n, longest in prows:
            t, c = k >> 2, _WAIT_CAT[k & 3]
            present.add(t)
            waits[(t, c)] = (n, longest)
            old = wait_all.get(c, (0, 0))
            wait_all[c] = (old[0] + n, max(old[1], longest))
        for t in range(nt):
            if any(agg[t][c][0] for c in range(5)) or tot[t][5]:
                present.add(t)
        if not present:
            return []
        s, e = _fmt(start), _fmt(end)
        out = []
        for c, cat in enumerate(CATEGORY_KEYS):
            rec = _category_record(name, s, e, date, "*", cat, c, agg[nt][c], quant[nt][c],
                                   wait_all.get(c))
            if rec is not None:
                out.append(rec)
        out.append(_totals_record(name, s, e, date, "*", tot[nt]))
        for t in sorted(present, key=self.rank.__getitem__):
            for c, cat in enumerate(CATEGORY_KEYS):
                rec = _category_record(name, s, e, date, names[t], cat, c, agg[t][c],
                                       quant[t][c], waits.get((t, c)))
                if rec is not None:
                    out.append(rec)
            if tot[t][5] or tot[t][4]:
                out.append(_totals_record(name, s, e, date, names[t], tot[t]))
        return out

    # -- summary --------------------------------------------------------------------------------
    def summary(self, n_records: int, letters: list[DeadLetter]) -> dict:
        st = self.settings
        state = self.state
        cats = {}
        for c, key in enumerate(CATEGORY_KEYS):
            vals = self.category_values(c)
            tot = CategoryTotals(st.relative_accuracy)
            tot.count = len(vals)
            if len(vals):
                tot.sum_ms = int(vals.sum())
                tot.max_ms = int(vals.max())
                tot.sketch.add_many(vals / 1000.0)
            cats[key] = tot.to_dict()
        reasons: dict[str, int] = {}
        for letter in letters:
            reasons[letter.reason] = reasons.get(letter.reason, 0) + 1
        incomplete = {}
        for name, idx in zip(J.INCOMPLETE_REASONS, (J.S_INC0, J.S_INC1, J.S_INC2)):
            if state[idx]:
                incomplete[name] = int(state[idx])
        return {
            "events": n_records,
            "dead_letters": len(letters),
            "calls": self.totals[0],
            "hear_and_treat": self.totals[1],
            "redirected": self.totals[2],
            "categories": cats,
            "dead_letter_reasons": dict(sorted(reasons.items())),
            "incomplete": dict(sorted(incomplete.items())),
            "duplicates": int(state[J.S_DUP]),
            "after_final": int(state[J.S_AF]),
            "c1_without_transport": int(state[J.S_C1WT]),
            "late_events": int(state[J.S_LATE]),
            "late_responses": self.late_responses,
            "too_late": self.too_late,
            "stats_records": self.stats_records,
            "alerts": self.alert_records,
            "clock": st.clock,
        }


class _Capture:
    """Which closes of a segment leave their aggregates for the rules (keep[close] = slot or
    -1), and the slots: responses [slot, trust, category, 6], centiles [.., 3], totals
    [slot, trust, 6], as `streams.fast.windows._aggregate_close` lays them out."""

    def __init__(self, keep: np.ndarray, n_trusts: int) -> None:
        n = int((keep >= 0).sum())
        self.keep = keep
        self.agg = np.zeros((n, n_trusts + 1, 5, 6), np.int64)
        self.quant = np.zeros((n, n_trusts + 1, 5, 3), np.float64)
        self.tot = np.zeros((n, n_trusts + 1, 6), np.int64)

    @classmethod
    def none(cls, n_closes: int, n_trusts: int) -> "_Capture":
        return cls(np.full(n_closes, -1, np.int64), n_trusts)

    @classmethod
    def keeping(cls, closes: list, n_rule: int, windows: frozenset, n_trusts: int) -> "_Capture":
        """The closes the rules read: of their windows, at boundaries they evaluate."""
        keep = np.full(len(closes), -1, np.int64)
        slot = 0
        for i, c in enumerate(closes):
            if c[0] < n_rule and c[1] in windows:
                keep[i] = slot
                slot += 1
        return cls(keep, n_trusts)

    def slots(self, closes: list) -> tuple:
        """(boundary, window, date) of each slot, and the slots' aggregates."""
        kept = [(c[0], c[1], c[4]) for c, s in zip(closes, self.keep.tolist()) if s >= 0]
        return kept, self.agg, self.quant, self.tot


_fmt_cache: dict[int, str] = {}


def _fmt(ms: int) -> str:
    s = _fmt_cache.get(ms)
    if s is None:
        if len(_fmt_cache) > 100_000:
            _fmt_cache.clear()
        s = _fmt_cache[ms] = format_ts(ms)
    return s


def _category_record(name, s, e, date, trust, cat, c, agg, q, wait):
    """WindowStore._category_record from kernel aggregates (same keys, same order)."""
    n = agg[0]
    if n == 0 and not wait:
        return None
    rec = {"window": name, "start": s, "end": e}
    if date is not None:
        rec["date"] = date
    rec["trust"] = trust
    rec["category"] = cat
    rec["count"] = n
    if n:
        total = agg[1]
        rec["mean_s"] = round(total / n / 1000.0, 3)
        rec["p50_s"] = round(q[0], 3)
        rec["p90_s"] = round(q[1], 3)
        rec["p99_s"] = round(q[2], 3)
        rec["max_s"] = agg[2] / 1000.0
        rec["sum_s"] = total / 1000.0
    else:
        rec["mean_s"] = rec["p50_s"] = rec["p90_s"] = rec["p99_s"] = rec["max_s"] = None
        rec["sum_s"] = 0.0
    rec["late"] = agg[4]
    if c != 1:
        waiting, longest = wait or (0, 0)
        rec["waiting"] = waiting
        rec["longest_wait_s"] = longest / 1000.0
    return rec


def _totals_record(name, s, e, date, trust, row):
    rec = {"window": name, "start": s, "end": e}
    if date is not None:
        rec["date"] = date
    rec.update({"trust": trust, "category": "ALL", "calls": row[0], "hear_and_treat": row[1],
                "redirected": row[2], "redirected_c1": row[3], "responses": row[4]})
    return rec


# -- small kernels ----------------------------------------------------------------------------
from numba import njit  # noqa: E402  (kept next to the helpers that use it)


@njit(cache=True, nogil=True)
def _sort_keys(ts, code):
    """time * 4 + type for events; non-events sort last."""
    out = np.empty(ts.shape[0], np.int64)
    big = np.iinfo(np.int64).max
    for i in range(ts.shape[0]):
        t = code[i] & 3
        out[i] = big if t == S.NOT_EVENT else ts[i] * 4 + t
    return out


@njit(cache=True, nogil=True)
def _tie_runs(order, key):
    """[start, end) of each run of two or more events with the same time and type."""
    out = np.zeros((16, 2), np.int64)
    k = 0
    m = order.shape[0]
    i = 0
    while i < m:
        j = i + 1
        v = key[order[i]]
        while j < m and key[order[j]] == v:
            j += 1
        if j - i > 1:
            if k == out.shape[0]:
                bigger = np.zeros((k * 2, 2), np.int64)
                bigger[:k] = out
                out = bigger
            out[k, 0] = i
            out[k, 1] = j
            k += 1
        i = j
    return out[:k]


@njit(cache=True, nogil=True)
def _last_call_changes(T, trust_mask, nt):
    """(boundary, trust, latest call time) whenever a trust's latest call moves forward,
    collapsed to the last change per trust before each boundary, in first-seen order; from
    the join's call totals log T (time, boundary << 32 | trust << 2 | kind; kind 0 = call),
    of trusts 0..nt-1. One pass into room for a change per row (pages never written are
    never touched), the used rows returned."""
    n = T.shape[0]
    out = np.empty((max(n, 1), 3), np.int64)
    touched = np.zeros(max(nt, 1), np.int64)   # trusts changed in the current step
    best = np.full(max(nt, 1), -1, np.int64)
    slot = np.full(max(nt, 1), -1, np.int64)   # the trust's change in the current step
    k = 0
    first = 0                 # first change of the current boundary step
    step = np.int64(-1)
    for i in range(n):
        if T[i, 1] & 3 != 0:
            continue
        t0 = T[i, 1] >> 32
        if t0 != step:
            step = t0
            for x in range(k - first):
                slot[touched[x]] = -1
            first = k
        tr = (T[i, 1] >> 2) & trust_mask
        ts = T[i, 0]
        if ts <= best[tr]:
            continue
        best[tr] = ts
        # within one boundary step: keep each trust's last value, in first-update order
        if slot[tr] >= 0:
            out[slot[tr], 2] = ts
            continue
        slot[tr] = k
        touched[k - first] = tr
        out[k, 0] = t0
        out[k, 1] = tr
        out[k, 2] = ts
        k += 1
    return out[:k]
