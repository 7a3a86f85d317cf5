"""Batch decoding of fetched records (`streams.fast.records.RecordDecoder`): record for
record the reference decoder's events and rejections."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from producers.simulate import TrustProfile, generate
from streams.events import Event, decode
from streams.fast import scan as S
from streams.fast.records import RecordDecoder
from tests.test_columnar import BAD_LINES, BASE, event_dicts, render

MAX = 16 * 1024


def reference(raws: list[bytes], positions: list[int], max_bytes: int = MAX,
              source: str = "calls.triaged") -> list:
    return [decode(r, source, p, max_bytes) for r, p in zip(raws, positions)]


@hsettings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(evs=st.lists(event_dicts(BASE), min_size=1, max_size=20),
       styles=st.lists(st.integers(0, 5), min_size=20, max_size=20))
def test_a_batch_decodes_exactly_as_record_by_record(evs, styles):
    raws = [render(e, s) for e, s in zip(evs, styles)] + BAD_LINES
    positions = list(range(100, 100 + len(raws)))
    got = RecordDecoder(MAX).decode(raws, "calls.triaged", positions)
    want = reference(raws, positions)
    assert got == want
    # the same type of every field, not only equal values (enums, bool, str)
    assert [[type(x) for x in r] for r in got] == [[type(x) for x in r] for r in want]


def test_canonical_records_take_the_scanner_path_and_keep_their_bytes():
    raws = list(generate([TrustProfile("LAS", 2000)], BASE, 0.1, seed=3))
    decoder = RecordDecoder(MAX)
    got = decoder.decode(raws, "calls.received", list(range(len(raws))))
    assert got == reference(raws, list(range(len(raws))), source="calls.received")
    assert all(type(r) is Event for r in got) and len(got) > 300
    assert all(r.raw is raw for r, raw in zip(got, raws))
    # and the scanner itself took them all (nothing left to the Python decoder)
    buf = b"".join(raws)
    lens = np.array([len(r) for r in raws], np.int64)
    ends = np.cumsum(lens)
    codes = np.empty(len(raws), np.uint8)
    S.scan_events(np.frombuffer(buf, np.uint8), ends - lens, ends, len(raws), MAX,
                  np.empty(len(raws), np.int64), codes, np.empty(len(buf) + 5 * len(raws),
                                                                 np.uint8),
                  np.zeros(1, np.int64), *S.scratch())
    assert S.PENDING not in codes.tolist()


def test_oversized_empty_and_one_record_batches():
    big = b'{"type":"crew_arrived","call_id":"a","ts":1768377600000,"note":"' + b"x" * 200 + b'"}'
    decoder = RecordDecoder(100)
    raws = [big, b"", b'{"type":"crew_arrived","call_id":"a","ts":1768377600000}']
    got = decoder.decode(raws, "calls.arrived", [7, 8, 9])
    assert got == reference(raws, [7, 8, 9], 100, "calls.arrived")
    assert [type(r).__name__ for r in got] == ["Rejection", "Rejection", "Event"]
    assert got[0].reason == "oversized"
    assert decoder.decode([], "calls.arrived", []) == []
