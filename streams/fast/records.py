"""Batches of raw records (a fetched chunk of a Kafka partition) -> `Event`s, with one Numba
scan per batch instead of a JSON parse and a validation per record.

The scanner (`streams.fast.scan.scan_events`) takes only records it is certain about and
gives their type, category, disposition, flags, event time and string fields; the `Event`
is built from those. Every other record goes through `streams.events.decode`, so what is
accepted, what it reads as, and every rejection reason are exactly the reference decoder's
(checked record for record in tests/test_records.py)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from streams.events import Category, Disposition, Event, EventType, Rejection, decode
from streams.fast.scan import ARRIVED, FLAG, PENDING, RECEIVED, TRIAGED, scan_events, scratch

_CATEGORIES = (None, Category.C1, Category.C2, Category.C3, Category.C4)
_DISPOSITIONS = (Disposition.DISPATCH, Disposition.HEAR_AND_TREAT, Disposition.REDIRECT)
_RECEIVED, _TRIAGED, _ARRIVED = EventType.CALL_RECEIVED, EventType.TRIAGED, EventType.CREW_ARRIVED


class RecordDecoder:
    """`decode` over a batch; one per consumer (it keeps the scanner's scratch arrays)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._scratch = scratch()
        # load (or compile, on a fresh install) the kernel now, not on the first fetch
        self.decode([b'{"type":"crew_arrived","call_id":"x","ts":1768377600000}'], "", [0])

    def scan(self, raws: list[bytes]) -> "ScannedBatch":
        """The batch's bytes and one kernel pass over them (see `ScannedBatch`)."""
        n = len(raws)
        buf = b"".join(raws)
        lens = np.fromiter(map(len, raws), np.int64, n)
        starts = np.cumsum(lens) - lens
        return self.scan_spans(np.frombuffer(buf, np.uint8), starts, lens)

    def scan_spans(self, buf: np.ndarray, starts: np.ndarray, lens: np.ndarray
                   ) -> "ScannedBatch":
        """One kernel pass over the records buf[starts[i]:starts[i] + lens[i]] (spans laid
        end to end, as a fetched run's values copied into an arena are)."""
        n = len(starts)
        ts = np.empty(n, np.int64)
        codes = np.empty(n, np.uint8)
        text = np.empty(len(buf) + 5 * n, np.uint8)
        used = np.zeros(1, np.int64)
        if n:
            scan_events(buf, starts, starts + lens, n, self.max_bytes, ts, codes, text, used,
                        *self._scratch)
        # every taken record's five strings in one decode and one split: a slice and a
        # decode per field cost more than the scan
        strings = text[:used[0]].tobytes().decode("ascii").split("\0")
        strings.pop()                       # after the last NUL
        return ScannedBatch(buf, starts, lens, ts, codes, strings)

    def decode(self, raws: list[bytes], source: str, positions: list[int]
               ) -> list[Event | Rejection]:
        """The same as `[decode(raw, source, pos, max_bytes) for raw, pos in ...]`."""
        if not raws:
            return []
        batch = self.scan(raws)
        strings = zip(*[iter(batch.strings)] * 5)
        out: list[Event | Rejection] = []
        append = out.append
        max_bytes = self.max_bytes
        for raw, pos, t, code in zip(raws, positions, batch.ts.tolist(), batch.codes.tolist()):
            if code == PENDING:
                append(decode(raw, source, pos, max_bytes))
                continue
            call_id, trust, answered_by, redirect_to, resource_id = next(strings)
            kind = code & 3
            if kind == RECEIVED:
                append(Event(t, _RECEIVED, call_id, trust, answered_by or trust, None, None,
                             None, None, True, raw, source, pos))
            elif kind == TRIAGED:
                append(Event(t, _TRIAGED, call_id, trust or None, None,
                             _CATEGORIES[(code >> 2) & 7], _DISPOSITIONS[(code >> 5) & 3],
                             redirect_to or None, None, True, raw, source, pos))
            else:
                append(Event(t, _ARRIVED, call_id, trust or None, None, None, None, None,
                             resource_id or None, bool(code & FLAG), raw, source, pos))
        return out


class ScannedBatch(NamedTuple):
    """A batch after the scan: record i is buf[starts[i]:starts[i] + lens[i]] (buf: uint8
    array); where
    codes[i] is not PENDING, ts[i] and codes[i] are its event time and code (the scanner's
    layout), and its five `EVENT_STRINGS` are next in `strings` (call id, trust, answered
    by, redirect to, resource id; empty when absent)."""

    buf: np.ndarray
    starts: np.ndarray
    lens: np.ndarray
    ts: np.ndarray
    codes: np.ndarray
    strings: list[str]


def event_code(ev: Event) -> int:
    """The scanner's record code of an event decoded in Python."""
    if ev.type is _RECEIVED:
        return RECEIVED | (FLAG if ev.answered_by != ev.trust else 0)
    if ev.type is _TRIAGED:
        return TRIAGED | (_CATEGORIES.index(ev.category) << 2) \
            | (_DISPOSITIONS.index(ev.disposition) << 5)
    return ARRIVED | (FLAG if ev.transport_capable else 0)
