"""Kafka wire format in bulk: key partitioning and v2 record-batch encoding as Numba kernels.

kafka-python's `send()` costs ~50 µs a record in pure Python (a future, a partitioner call,
varints one byte at a time), which caps a publisher at ~20k records/s. These kernels do the
same work for a whole chunk of records at once; `producers.kafka_io.BulkProducer` hands the
encoded batches to kafka-python's own sender, which still does acks=all, idempotence
(producer id and sequence numbers are stamped when a batch is drained), retries and ordering.

Both kernels are checked against kafka-python's pure-Python implementations in the tests:
`murmur2` against `kafka.partitioner.default.murmur2`, and the encoded records against
`kafka.record.default_records.DefaultRecordBatchBuilder`, byte for byte."""

from __future__ import annotations

import numpy as np
from numba import njit

#: Size of a v2 record-batch header (offset .. record count), before the records.
BATCH_HEADER_BYTES = 61


@njit(cache=True)
def _murmur2(buf, start, end):
    """Java-compatible murmur2 (seed 0x9747b28c) of buf[start:end], as an unsigned 32-bit int."""
    m = 0x5BD1E995
    length = end - start
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    n4 = length // 4
    for i in range(n4):
        j = start + 4 * i
        k = (np.int64(buf[j]) | (np.int64(buf[j + 1]) << 8) | (np.int64(buf[j + 2]) << 16)
             | (np.int64(buf[j + 3]) << 24))
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = start + 4 * n4
    extra = length & 3
    if extra >= 3:
        h ^= np.int64(buf[tail + 2]) << 16
    if extra >= 2:
        h ^= np.int64(buf[tail + 1]) << 8
    if extra >= 1:
        h ^= np.int64(buf[tail])
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


@njit(cache=True)
def murmur2_many(buf, offsets):
    """murmur2 of each key buf[offsets[i]:offsets[i+1]] (unsigned 32-bit values)."""
    n = len(offsets) - 1
    out = np.empty(n, np.int64)
    for i in range(n):
        out[i] = _murmur2(buf, offsets[i], offsets[i + 1])
    return out


def partitions_for_keys(buf: np.ndarray, offsets: np.ndarray, n_partitions: int) -> np.ndarray:
    """Kafka's default partition of each key: (murmur2(key) & 0x7fffffff) % n."""
    return (murmur2_many(buf, offsets) & 0x7FFFFFFF) % n_partitions


@njit(cache=True)
def _varint_len(v):
    z = (v << 1) ^ (v >> 63)          # zigzag, as a non-negative int64 for |v| < 2^62
    n = 1
    while z >= 0x80:
        z >>= 7
        n += 1
    return n


@njit(cache=True)
def _put_varint(out, pos, v):
    z = (v << 1) ^ (v >> 63)
    while z >= 0x80:
        out[pos] = (z & 0x7F) | 0x80
        z >>= 7
        pos += 1
    out[pos] = z
    return pos + 1


@njit(cache=True)
def encode_batches(values, value_off, keys, key_off, key_null, ts, order, group, max_bytes,
                   out, b_group, b_count, b_start, b_end, b_first_ts, b_max_ts, b_first):
    """Encode records into v2 record-batch bodies, one run of batches per group.

    `order` lists record indices grouped by `group[record]` (topic-partition), in send order
    within a group. A batch holds records of one group while its encoded size (header
    included) stays within `max_bytes`; a record larger than that gets a batch of its own.
    Writes the records of batch b to out[b_start[b]:b_end[b]] and returns the batch count."""
    n = len(order)
    pos = 0
    nb = 0
    i = 0
    while i < n:
        g = group[order[i]]
        first_ts = ts[order[i]]
        max_ts = first_ts
        b_group[nb] = g
        b_start[nb] = pos
        b_first[nb] = i
        size = 61
        count = 0
        while i < n and group[order[i]] == g:
            r = order[i]
            klen = -1 if key_null[r] else key_off[r + 1] - key_off[r]
            vlen = value_off[r + 1] - value_off[r]
            delta = ts[r] - first_ts
            body = (1 + _varint_len(delta) + _varint_len(count) + _varint_len(klen)
                    + max(klen, 0) + _varint_len(vlen) + vlen + 1)
            rec = _varint_len(body) + body
            if count > 0 and size + rec > max_bytes:
                break
            pos = _put_varint(out, pos, body)
            out[pos] = 0                                  # attributes
            pos += 1
            pos = _put_varint(out, pos, delta)
            pos = _put_varint(out, pos, count)            # offset delta
            pos = _put_varint(out, pos, klen)
            if klen > 0:
                out[pos:pos + klen] = keys[key_off[r]:key_off[r + 1]]
                pos += klen
            pos = _put_varint(out, pos, vlen)
            out[pos:pos + vlen] = values[value_off[r]:value_off[r + 1]]
            pos += vlen
            out[pos] = 0                                  # no headers
            pos += 1
            size += rec
            count += 1
            if ts[r] > max_ts:
                max_ts = ts[r]
            i += 1
        b_count[nb] = count
        b_end[nb] = pos
        b_first_ts[nb] = first_ts
        b_max_ts[nb] = max_ts
        nb += 1
    return nb


def warm_up() -> None:
    """Compile (or load from the cache) both kernels before the clock starts."""
    buf = np.frombuffer(b"k1", np.uint8).copy()
    off = np.array([0, 2], np.int64)
    murmur2_many(buf, off)
    out = np.zeros(128, np.uint8)
    idx = np.zeros(2, np.int64)
    encode_batches(buf, off, buf, off, np.zeros(1, np.bool_), np.zeros(1, np.int64),
                   np.zeros(1, np.int64), np.zeros(1, np.int64), 1 << 20, out, idx, idx.copy(),
                   idx.copy(), idx.copy(), idx.copy(), idx.copy(), idx.copy())
