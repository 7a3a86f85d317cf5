"""`streams.fast.recordbatch`: fetched Kafka bytes -> record columns, against aiokafka's own
reader of the same bytes (batches built with aiokafka's batch builder)."""

from __future__ import annotations

import gzip  # noqa: F401 - aiokafka's gzip codec needs it importable
import struct

import numpy as np
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from hypothesis import given, settings as hsettings, strategies as st

from streams.fast.recordbatch import (_CRC, CORRUPT, MALFORMED, OK, UNSUPPORTED, RecordRun,
                                      crc32c)

Rec = tuple[bytes | None, bytes | None, int, list]      # key, value, timestamp delta, headers


def batch(base_offset: int, records: list[Rec], base_ts: int = 1_768_000_000_000,
          compression: int = 0, gap: int = 1) -> bytes:
    b = DefaultRecordBatchBuilder(magic=2, compression_type=compression, is_transactional=0,
                                  producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                  batch_size=1 << 24)
    for i, (key, value, dt, headers) in enumerate(records):
        b.append(i * gap, timestamp=base_ts + dt, key=key, value=value, headers=headers)
    data = bytearray(b.build())
    data[0:8] = struct.pack(">q", base_offset)       # not covered by the CRC
    return bytes(data)


def with_attributes(data: bytes, bits: int) -> bytes:
    """The batch with attribute bits set and its CRC made right again."""
    d = bytearray(data)
    attrs = struct.unpack(">h", d[21:23])[0] | bits
    d[21:23] = struct.pack(">h", attrs)
    d[17:21] = struct.pack(">I", calc_crc32c(bytes(d[21:])))
    return bytes(d)


def reference(data: bytes, fetch_offset: int) -> list[tuple]:
    """aiokafka's reading: (offset, timestamp, key, value) of every record at or after the
    fetch offset, control batches left out."""
    out = []
    m = MemoryRecords(data)
    while m.has_next():
        b = m.next_batch()
        if b is None:
            break
        if b.is_control_batch:
            continue
        for r in b:
            if r.offset >= fetch_offset:
                out.append((r.offset, r.timestamp, r.key, r.value))
    return out


def columns(run: RecordRun) -> list[tuple]:
    out = [(int(run.offsets[i]), int(run.timestamps[i]), run.key(i),
            None if run.value_len[i] < 0 else run.value(i)) for i in range(len(run))]
    # the all-at-once accessors read the same bytes as the per-record ones
    assert run.keys() == [k for _, _, k, _ in out]
    assert run.values() == [v if v is not None else b"" for _, _, _, v in out]
    return out


records = st.lists(st.tuples(st.none() | st.binary(max_size=40), st.none() | st.binary(max_size=300),
                             st.integers(0, 10**6),
                             st.lists(st.tuples(st.text(max_size=5), st.binary(max_size=8)),
                                      max_size=2)),
                   min_size=1, max_size=30)


@hsettings(max_examples=200, deadline=None)
@given(batches=st.lists(records, min_size=1, max_size=5), skip=st.integers(0, 40),
       gap=st.integers(1, 3))
def test_parse_equals_aiokafkas_reading(batches, skip, gap):
    data, offset = b"", 100
    for recs in batches:
        data += batch(offset, recs, gap=gap)
        offset += len(recs) * gap + 7          # gaps between batches, as compaction leaves
    fetch_offset = 100 + skip                  # may start inside a batch
    run, nxt, status = RecordRun.parse("t", 0, data, fetch_offset)
    assert status == OK
    assert columns(run) == reference(data, fetch_offset)
    last_batch_base = offset - len(batches[-1]) * gap - 7
    assert nxt == max(fetch_offset, last_batch_base + (len(batches[-1]) - 1) * gap + 1)


def test_partial_batch_at_the_end_is_left_for_the_next_fetch():
    first = batch(0, [(b"k", b"v1", 0, []), (b"k", b"v2", 5, [])])
    second = batch(2, [(b"k", b"v3", 9, [])])
    run, nxt, status = RecordRun.parse("t", 0, first + second[:-3], 0)
    assert (status, nxt, [v for *_, v in columns(run)]) == (OK, 2, [b"v1", b"v2"])


def test_corrupt_batch_is_reported_and_the_crc_matches_aiokafkas():
    data = batch(0, [(None, b'{"type":"triaged"}', 0, [])])
    assert int(crc32c(np.frombuffer(data, np.uint8), 21, len(data), _CRC)) == \
        calc_crc32c(data[21:]) == struct.unpack(">I", data[17:21])[0]
    bad = bytearray(data)
    bad[-2] ^= 0x01
    assert RecordRun.parse("t", 0, bytes(bad), 0)[2] == CORRUPT
    assert RecordRun.parse("t", 0, bytes(bad), 0, check_crcs=False)[2] == OK


def test_compressed_batch_is_left_to_aiokafka():
    data = batch(0, [(None, b"x" * 100, 0, [])], compression=1)        # gzip
    assert RecordRun.parse("t", 0, data, 0)[2] == UNSUPPORTED


def test_control_batch_is_skipped_and_its_offsets_consumed():
    data = batch(0, [(b"a", b"1", 0, [])]) + with_attributes(batch(1, [(b"\0\0\0\0", b"", 0, [])]),
                                                              0x20 | 0x10)
    run, nxt, status = RecordRun.parse("t", 0, data, 0)
    assert (status, nxt, columns(run)) == (OK, 2, reference(data, 0))
    assert len(run) == 1


def test_log_append_time_stamps_every_record_with_the_batch_max():
    plain = batch(0, [(None, b"a", 0, []), (None, b"b", 7, [])], base_ts=1000)
    data = with_attributes(plain, 0x08)
    run, _, status = RecordRun.parse("t", 0, data, 0)
    max_ts = struct.unpack(">q", data[35:43])[0]
    assert status == OK and run.timestamps.tolist() == [max_ts, max_ts]


def test_malformed_record_lengths_are_reported():
    d = bytearray(batch(0, [(None, b"abc", 0, [])]))
    d[61] = 0x7E                               # record length far past the batch end
    d[17:21] = struct.pack(">I", calc_crc32c(bytes(d[21:])))
    assert RecordRun.parse("t", 0, bytes(d), 0)[2] == MALFORMED


def test_runs_slice_and_concatenate():
    data = batch(10, [(b"k%d" % i, b"value %d" % i, i, []) for i in range(6)])
    run, _, _ = RecordRun.parse("t", 3, data, 10)
    joined = RecordRun.concat([run[:2], run[2:5], run[5:]])
    assert columns(joined) == columns(run)
    assert joined.values() == [b"value %d" % i for i in range(6)]
    again = RecordRun.from_records("t", 3, [_Msg(o, t, k, v) for o, t, k, v in columns(run)])
    assert columns(again) == columns(run)


class _Msg:
    def __init__(self, offset, timestamp, key, value):
        self.offset, self.timestamp, self.key, self.value = offset, timestamp, key, value
