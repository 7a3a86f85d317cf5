"""Kafka record batches (message format v2) -> columns, in one Numba pass per fetch.

A fetched partition's bytes hold record batches; aiokafka turns each record into a
`ConsumerRecord` object, which on this machine costs ~3.6 µs per event, more than the join.
`parse_fetch` reads the same bytes into arrays (offset, timestamp, key and value spans) and a
`RecordRun` keeps them with the buffer, so the join stage never makes a per-record object.

The parse follows the v2 layout (Kafka's DefaultRecordBatch / DefaultRecord) and aiokafka's
reading of it: CRC-32C of every batch checked, control batches skipped (their offsets
consumed), records before the fetch offset skipped (a fetch can start inside a batch),
log-append-time batches stamped with the batch's max timestamp, a partial batch at the end
left for the next fetch. Compressed batches and older formats are not parsed here
(`UNSUPPORTED`): the caller reads that fetch through aiokafka's own records instead."""

from __future__ import annotations

import numpy as np
from numba import njit

OK, UNSUPPORTED, CORRUPT, MALFORMED = 0, 1, 2, 3
_HEADER = 61                      # bytes before a v2 batch's first record


def _crc32c_table() -> np.ndarray:
    t = np.zeros((8, 256), np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t[0, i] = c
    for k in range(1, 8):
        for i in range(256):
            t[k, i] = (t[k - 1, i] >> 8) ^ t[0, t[k - 1, i] & 0xFF]
    return t


_CRC = _crc32c_table()


@njit(cache=True, nogil=True)
def crc32c(buf, lo, hi, table):
    """CRC-32C (Castagnoli) of buf[lo:hi], eight bytes a step (slicing-by-8)."""
    c = np.uint32(0xFFFFFFFF)
    i = lo
    while i + 8 <= hi:
        a = c ^ (np.uint32(buf[i]) | (np.uint32(buf[i + 1]) << 8)
                 | (np.uint32(buf[i + 2]) << 16) | (np.uint32(buf[i + 3]) << 24))
        c = (table[7, a & 0xFF] ^ table[6, (a >> 8) & 0xFF] ^ table[5, (a >> 16) & 0xFF]
             ^ table[4, a >> 24] ^ table[3, buf[i + 4]] ^ table[2, buf[i + 5]]
             ^ table[1, buf[i + 6]] ^ table[0, buf[i + 7]])
        i += 8
    while i < hi:
        c = table[0, (c ^ buf[i]) & 0xFF] ^ (c >> 8)
        i += 1
    return c ^ np.uint32(0xFFFFFFFF)


@njit(cache=True, nogil=True)
def _int(buf, i, n):
    """Big-endian signed integer of n bytes at i."""
    v = np.int64(0)
    for k in range(n):
        v = (v << 8) | np.int64(buf[i + k])
    if n < 8 and v >> (8 * n - 1):
        v -= np.int64(1) << (8 * n)
    return v


@njit(cache=True, nogil=True)
def _varint(buf, i, end):
    """Zigzag varint at i -> (value, next index); next index -1 if it runs past end."""
    shift = 0
    raw = np.uint64(0)
    while True:
        if i >= end or shift > 63:
            return np.int64(0), np.int64(-1)
        b = buf[i]
        i += 1
        raw |= np.uint64(b & 0x7F) << np.uint64(shift)
        if b < 0x80:
            break
        shift += 7
    v = np.int64(raw >> np.uint64(1)) ^ -np.int64(raw & np.uint64(1))
    return v, np.int64(i)


@njit(cache=True, nogil=True)
def parse_fetch(buf, fetch_offset, check_crcs, table):
    """Every record of the complete batches in buf at or after fetch_offset.

    Returns (status, next_offset, offsets, timestamps, key_start, key_len, value_start,
    value_len); a null key or value has length -1. next_offset is where the next fetch
    starts (after the last complete batch, control batches included). With a status other
    than OK, the arrays hold what came before the batch at next_offset."""
    size = buf.shape[0]
    # pass 1: room (record counts of complete batches)
    room = 0
    pos = 0
    while pos + _HEADER <= size:
        end = pos + 12 + _int(buf, pos + 8, 4)
        if end > size or end < pos + _HEADER:
            break
        room += min(max(_int(buf, pos + 57, 4), 0), end - pos)
        pos = end
    offsets = np.empty(room, np.int64)
    stamps = np.empty(room, np.int64)
    kst = np.empty(room, np.int64)
    kln = np.empty(room, np.int64)
    vst = np.empty(room, np.int64)
    vln = np.empty(room, np.int64)
    n = 0
    nxt = np.int64(fetch_offset)
    pos = 0
    status = OK
    while pos + _HEADER <= size:
        base = _int(buf, pos, 8)
        end = pos + 12 + _int(buf, pos + 8, 4)
        if end > size:
            break                              # partial: fetched again next time
        if end < pos + _HEADER:
            status = MALFORMED
            break
        if buf[pos + 16] != 2:
            status = UNSUPPORTED
            break
        attrs = _int(buf, pos + 21, 2)
        if attrs & 7:
            status = UNSUPPORTED               # compressed
            break
        if check_crcs and np.uint32(_int(buf, pos + 17, 4) & 0xFFFFFFFF) != \
                crc32c(buf, pos + 21, end, table):
            status = CORRUPT
            break
        last = base + _int(buf, pos + 23, 4)
        if attrs & 0x20:                       # control batch (transaction markers)
            if last + 1 > nxt:
                nxt = last + 1
            pos = end
            continue
        base_ts = _int(buf, pos + 27, 8)
        log_append = (attrs & 8) != 0
        max_ts = _int(buf, pos + 35, 8)
        count = _int(buf, pos + 57, 4)
        i = pos + _HEADER
        first = n
        if count < 0 or count > end - i:
            status = MALFORMED
            break
        for _ in range(count):
            length, i = _varint(buf, i, end)
            if i < 0 or length < 0 or i + length > end:
                status = MALFORMED
                break
            rec_end = i + length
            j = i + 1                          # record attributes: unused
            ts_delta, j = _varint(buf, j, rec_end)
            if j < 0:
                status = MALFORMED
                break
            off_delta, j = _varint(buf, j, rec_end)
            if j < 0:
                status = MALFORMED
                break
            klen, j = _varint(buf, j, rec_end)
            if j < 0 or j + max(klen, 0) > rec_end:
                status = MALFORMED
                break
            kpos = j
            j += max(klen, 0)
            vlen, j = _varint(buf, j, rec_end)
            if j < 0 or j + max(vlen, 0) > rec_end:
                status = MALFORMED
                break
            off = base + off_delta
            if off >= fetch_offset:
                offsets[n] = off
                stamps[n] = max_ts if log_append else base_ts + ts_delta
                kst[n] = kpos
                kln[n] = klen
                vst[n] = j
                vln[n] = vlen
                n += 1
            i = rec_end                        # headers: skipped
        if status != OK:
            n = first
            break
        if last + 1 > nxt:
            nxt = last + 1
        pos = end
    return (status, nxt, offsets[:n], stamps[:n], kst[:n], kln[:n], vst[:n], vln[:n])


@njit(cache=True, nogil=True)
def gather(src, starts, lens, dest, at):
    """Copy the spans src[starts[i]:starts[i]+lens[i]] (null: none) one after another into
    dest from `at`; returns each one's start in dest."""
    out = np.empty(starts.shape[0], np.int64)
    for i in range(starts.shape[0]):
        out[i] = at
        n = lens[i]
        s = starts[i]
        for k in range(max(n, 0)):
            dest[at + k] = src[s + k]
        at += max(n, 0)
    return out


def _pieces(buf: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> list[bytes | None]:
    """buf[start:start + len] as bytes for each (length -1: None)."""
    if not len(starts):
        return []
    ends = starts + np.maximum(lens, 0)
    lo, hi = int(starts.min()), int(ends.max())
    data = buf[lo:hi].tobytes()
    return [data[s:e] if n >= 0 else None
            for s, e, n in zip((starts - lo).tolist(), (ends - lo).tolist(), lens.tolist())]


class RecordRun:
    """Records of one topic partition in offset order, as columns over one byte buffer:
    record i's value is buf[value_start[i]:value_start[i] + value_len[i]] (length -1: null),
    its key likewise. Slicing shares the buffer."""

    __slots__ = ("topic", "partition", "buf", "offsets", "timestamps", "key_start", "key_len",
                 "value_start", "value_len")

    def __init__(self, topic: str, partition: int, buf: np.ndarray, offsets: np.ndarray,
                 timestamps: np.ndarray, key_start: np.ndarray, key_len: np.ndarray,
                 value_start: np.ndarray, value_len: np.ndarray) -> None:
        self.topic = topic
        self.partition = partition
        self.buf = buf
        self.offsets = offsets
        self.timestamps = timestamps
        self.key_start = key_start
        self.key_len = key_len
        self.value_start = value_start
        self.value_len = value_len

    @classmethod
    def parse(cls, topic: str, partition: int, data, fetch_offset: int,
              check_crcs: bool = True) -> tuple["RecordRun", int, int]:
        """A fetched partition's bytes -> (run, next fetch offset, status)."""
        buf = np.frombuffer(data, np.uint8)
        status, nxt, *cols = parse_fetch(buf, fetch_offset, check_crcs, _CRC)
        return cls(topic, partition, buf, *cols), int(nxt), int(status)

    @classmethod
    def from_records(cls, topic: str, partition: int, records: list) -> "RecordRun":
        """From objects with `offset`, `timestamp`, `key`, `value` (aiokafka's records)."""
        n = len(records)
        parts: list[bytes] = []
        starts = np.empty(2 * n, np.int64)
        lens = np.empty(2 * n, np.int64)
        at = 0
        for i, m in enumerate(records):
            for j, b in ((2 * i, m.key), (2 * i + 1, m.value)):
                starts[j] = at
                if b is None:
                    lens[j] = -1
                else:
                    lens[j] = len(b)
                    parts.append(b)
                    at += len(b)
        return cls(topic, partition, np.frombuffer(b"".join(parts), np.uint8),
                   np.fromiter((m.offset for m in records), np.int64, n),
                   np.fromiter((m.timestamp for m in records), np.int64, n),
                   starts[0::2].copy(), lens[0::2].copy(), starts[1::2].copy(),
                   lens[1::2].copy())

    @classmethod
    def empty(cls, topic: str, partition: int) -> "RecordRun":
        z = np.zeros(0, np.int64)
        return cls(topic, partition, np.zeros(0, np.uint8), z, z, z, z, z, z)

    @classmethod
    def concat(cls, runs: list["RecordRun"]) -> "RecordRun":
        """One run of several (same topic partition, in order), keys and values copied
        into one buffer."""
        if len(runs) == 1:
            return runs[0]
        kbytes = sum(int(np.maximum(r.key_len, 0).sum()) for r in runs)
        vbytes = sum(int(np.maximum(r.value_len, 0).sum()) for r in runs)
        buf = np.empty(kbytes + vbytes, np.uint8)
        at = 0
        kst, vst = [], []
        for r in runs:
            kst.append(gather(r.buf, r.key_start, r.key_len, buf, at))
            at += int(np.maximum(r.key_len, 0).sum())
        for r in runs:
            vst.append(gather(r.buf, r.value_start, r.value_len, buf, at))
            at += int(np.maximum(r.value_len, 0).sum())
        cat = np.concatenate
        return cls(runs[0].topic, runs[0].partition, buf, cat([r.offsets for r in runs]),
                   cat([r.timestamps for r in runs]), cat(kst),
                   cat([r.key_len for r in runs]), cat(vst), cat([r.value_len for r in runs]))

    def __len__(self) -> int:
        return self.offsets.shape[0]

    def __getitem__(self, s: slice) -> "RecordRun":
        return RecordRun(self.topic, self.partition, self.buf, self.offsets[s],
                         self.timestamps[s], self.key_start[s], self.key_len[s],
                         self.value_start[s], self.value_len[s])

    def value(self, i: int) -> bytes:
        """Record i's value (a null value reads as b"", as the decoder takes it)."""
        n = int(self.value_len[i])
        s = int(self.value_start[i])
        return self.buf[s:s + n].tobytes() if n > 0 else b""

    def key(self, i: int) -> bytes | None:
        n = int(self.key_len[i])
        s = int(self.key_start[i])
        return None if n < 0 else self.buf[s:s + n].tobytes()

    def values(self) -> list[bytes]:
        """Every value (null as b"") in one pass: one copy of the bytes they span, then
        slices of it."""
        return [b if b is not None else b"" for b in _pieces(self.buf, self.value_start,
                                                            self.value_len)]

    def keys(self) -> list[bytes | None]:
        return _pieces(self.buf, self.key_start, self.key_len)

    @property
    def value_bytes(self) -> int:
        return int(np.maximum(self.value_len, 0).sum())
