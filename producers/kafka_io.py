"""kafka-python plumbing shared by every producer: a tuned idempotent producer, topic setup,
and one-line errors when the broker cannot be reached."""

from __future__ import annotations

import threading

import numpy as np

from streams.errors import CallstreamError
from streams.topics import TopicNames

#: Large enough for a dead letter holding a 1 MB rejected record.
MAX_REQUEST_BYTES = 4 * 1024 * 1024


def _unreachable(bootstrap: str, exc: Exception) -> CallstreamError:
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc.__class__.__name__
    return CallstreamError(f"cannot reach Kafka at {bootstrap} ({why}); "
                           "start one with `callstream broker start` or set --bootstrap / "
                           "CALLSTREAM_BOOTSTRAP")


def check_reachable(bootstrap: str, timeout: float = 3.0) -> None:
    """Fail fast, in one line, when no bootstrap server accepts a TCP connection (the Kafka
    clients would otherwise retry for ~30 s before giving up)."""
    import socket
    servers = [s.strip() for s in bootstrap.split(",") if s.strip()]
    errors = []
    for server in servers:
        host, sep, port = server.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise CallstreamError(f"bootstrap server {server!r} is not HOST:PORT "
                                  "(e.g. 127.0.0.1:9092)")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
            return
        except OSError as exc:
            errors.append(exc)
    if not servers:
        raise CallstreamError("no bootstrap server given (--bootstrap HOST:PORT)")
    raise _unreachable(bootstrap, errors[0])


def make_producer(bootstrap: str, **overrides):
    """acks=all + idempotence: a retried send never duplicates or reorders within a key."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError
    options = dict(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                   linger_ms=10, batch_size=512 * 1024, max_request_size=MAX_REQUEST_BYTES,
                   max_in_flight_requests_per_connection=5, request_timeout_ms=30_000)
    options.update(overrides)
    check_reachable(bootstrap)
    try:
        return KafkaProducer(**options)
    except KafkaError as exc:
        raise _unreachable(bootstrap, exc) from None


#: Input records carry their event time as Kafka timestamp, so a replayed log is "old": with
#: time-based retention and rolling Kafka would delete it as soon as it lands (and roll a
#: segment per batch). Inputs are kept until deleted on purpose; the worker re-reads them
#: after a crash.
KEEP_FOREVER = {"retention.ms": "-1", "segment.ms": str(100 * 365 * 86_400_000)}


def topic_configs(is_input: bool) -> dict[str, str]:
    cfg = {"max.message.bytes": str(MAX_REQUEST_BYTES)}
    return {**cfg, **KEEP_FOREVER} if is_input else cfg


def ensure_topics(bootstrap: str, topics: TopicNames, partitions: int) -> None:
    """Create missing topics (inputs with `partitions`, co-partitioned); refuse mismatches."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError
    check_reachable(bootstrap)
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    except KafkaError as exc:
        raise _unreachable(bootstrap, exc) from None
    try:
        existing = set(admin.list_topics())
        wanted = [NewTopic(name, partitions, 1, topic_configs=topic_configs(name in topics.inputs))
                  for name in topics if name not in existing]
        if wanted:
            try:
                admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass
        check_input_partitions(admin, topics, partitions)
    finally:
        admin.close()


def check_input_partitions(admin, topics: TopicNames, partitions: int | None) -> None:
    """Input topics must be co-partitioned: the per-call join depends on it."""
    described = admin.describe_topics(list(topics.inputs))
    counts = {d.get("name", d.get("topic")): len(d["partitions"]) for d in described}
    if len(set(counts.values())) > 1 or (partitions is not None and
                                         any(c != partitions for c in counts.values())):
        detail = ", ".join(f"{t}={n}" for t, n in sorted(counts.items()))
        raise CallstreamError(f"input topics must all have {partitions or 'the same number of'} "
                              f"partitions (co-partitioned by call_id), found {detail}")


class BulkProducer:
    """Many records per call through kafka-python's idempotent producer.

    `send_many` partitions the keys (Kafka's default murmur2 partitioner, so records land
    where any other client would put them) and encodes whole record batches with the kernels
    in `producers.wire`, then queues them in kafka-python's accumulator. Its sender thread
    does the rest exactly as for `send()`: producer id and sequence numbers (idempotence),
    acks=all, retries, ordering per partition. One callback per batch instead of one future
    per record is what makes it fast; failures are counted per batch, with the earliest
    position of a record that did not make it (to resume from).

    Relies on kafka-python internals (`_accumulator`, `_sender`), pinned in constraints.txt
    and exercised by the broker tests."""

    def __init__(self, bootstrap: str, batch_bytes: int = 512 * 1024,
                 max_buffered_bytes: int = 64 * 1024 * 1024, **overrides) -> None:
        from producers import wire
        wire.warm_up()
        self.producer = make_producer(bootstrap, batch_size=batch_bytes, **overrides)
        self.batch_bytes = batch_bytes
        self.max_buffered_bytes = max_buffered_bytes
        self._partitions: dict[str, int] = {}
        self._cond = threading.Condition()
        self._buffered = 0
        self._round_robin = 0
        self.acked = 0
        self.failed = 0
        self.first_error: BaseException | None = None
        self.first_failed_position: int | None = None

    def partition_count(self, topic: str) -> int:
        n = self._partitions.get(topic)
        if n is None:
            from kafka.errors import KafkaError
            try:
                n = len(self.producer.partitions_for(topic))
            except KafkaError as exc:
                raise CallstreamError(f"no metadata for topic {topic!r} from Kafka "
                                      f"({exc.__class__.__name__})") from None
            self._partitions[topic] = n
        return n

    def send_many(self, topics: list[str], topic_index: np.ndarray, keys: list,
                  values: list, timestamps: np.ndarray, positions: np.ndarray) -> None:
        """Queue records: values[i] to topics[topic_index[i]] with key keys[i] (bytes or None)
        and timestamp timestamps[i] (epoch ms); positions[i] identifies it for errors.
        Order is kept per topic partition."""
        from kafka.structs import TopicPartition
        from producers import wire
        n = len(values)
        if n == 0:
            return
        counts = np.array([self.partition_count(t) for t in topics], np.int64)
        width = int(counts.max())
        value_len = np.fromiter(map(len, values), np.int64, n)
        value_off = np.zeros(n + 1, np.int64)
        np.cumsum(value_len, out=value_off[1:])
        vbuf = np.frombuffer(b"".join(values), np.uint8)
        key_null = np.fromiter((k is None for k in keys), np.bool_, n)
        plain = [b"" if k is None else k for k in keys]
        key_off = np.zeros(n + 1, np.int64)
        np.cumsum(np.fromiter(map(len, plain), np.int64, n), out=key_off[1:])
        kbuf = np.frombuffer(b"".join(plain), np.uint8)
        parts_of = counts[topic_index]
        part = (wire.murmur2_many(kbuf, key_off) & 0x7FFFFFFF) % parts_of
        if key_null.any():
            # no key: spread over the partitions, like a round-robin partitioner
            nulls = np.flatnonzero(key_null)
            part[nulls] = (self._round_robin + np.arange(len(nulls))) % parts_of[nulls]
            self._round_robin += len(nulls)
        group = topic_index.astype(np.int64) * width + part
        order = np.argsort(group, kind="stable")
        out = np.empty(len(vbuf) + len(kbuf) + 40 * n, np.uint8)
        arrays = [np.empty(n, np.int64) for _ in range(7)]
        b_group, b_count, b_start, b_end, b_first_ts, b_max_ts, b_first = arrays
        nb = wire.encode_batches(vbuf, value_off, kbuf, key_off, key_null,
                                 np.ascontiguousarray(timestamps, np.int64), order, group,
                                 self.batch_bytes, out, b_group, b_count, b_start, b_end,
                                 b_first_ts, b_max_ts, b_first)
        for b in range(nb):
            g = int(b_group[b])
            count = int(b_count[b])
            first_pos = int(positions[order[b_first[b]:b_first[b] + count]].min())
            self._enqueue(TopicPartition(topics[g // width], g % width),
                          out[b_start[b]:b_end[b]].tobytes(), count, int(b_first_ts[b]),
                          int(b_max_ts[b]), first_pos)
        self.producer._sender.wakeup()
        self._wait_for_room()

    def _enqueue(self, tp, body: bytes, count: int, first_ts: int, max_ts: int,
                 first_pos: int) -> None:
        from kafka.producer.producer_batch import ProducerBatch
        from kafka.record.memory_records import MemoryRecordsBuilder
        records = MemoryRecordsBuilder(2, 0, self.batch_bytes)
        records._builder = _EncodedRecords(body, count, first_ts, max_ts, self.batch_bytes)
        records._next_offset = count
        records._batch_size = 0          # reads as full: the sender takes it without lingering
        batch = ProducerBatch(tp, records)
        size = len(body)
        with self._cond:
            self._buffered += size
        batch.produce_future.add_callback(self._done, size, count, first_pos)
        batch.produce_future.add_errback(self._failed, size, count, first_pos)
        acc = self.producer._accumulator
        with acc._tp_lock(tp):
            acc._batches[tp].append(batch)
            acc._incomplete.add(batch)

    def _done(self, size: int, count: int, first_pos: int, result) -> None:
        _, _, record_error = result
        if record_error is not None:
            self._failed(size, count, first_pos, record_error(0))
            return
        with self._cond:
            self.acked += count
            self._buffered -= size
            self._cond.notify_all()

    def _failed(self, size: int, count: int, first_pos: int, error) -> None:
        with self._cond:
            self.failed += count
            self._buffered -= size
            if self.first_error is None:
                self.first_error = error
            if self.first_failed_position is None or first_pos < self.first_failed_position:
                self.first_failed_position = first_pos
            self._cond.notify_all()

    def _wait_for_room(self) -> None:
        acc = self.producer._accumulator
        with self._cond:
            while self._buffered > self.max_buffered_bytes:
                self._cond.wait(0.2)
                if not acc.has_incomplete():   # nothing left in flight: nothing to wait for
                    self._buffered = 0

    def flush(self, timeout: float | None = None) -> None:
        self.producer.flush(timeout)

    def close(self, timeout: float = 30.0) -> None:
        self.producer.close(timeout=timeout)


def _encoded_records_class():
    from kafka.record.default_records import DefaultRecordBatchBuilder

    class EncodedRecords(DefaultRecordBatchBuilder):
        """A record-batch builder whose records are already encoded (by `wire`): kafka-python
        writes the header, producer state and CRC when the sender drains it, as for its own."""

        def __init__(self, body: bytes, count: int, first_ts: int, max_ts: int,
                     batch_size: int) -> None:
            super().__init__(magic=2, compression_type=0, is_transactional=False,
                             producer_id=-1, producer_epoch=-1, base_sequence=-1,
                             batch_size=batch_size)
            self._buffer.extend(body)
            self._first_timestamp = first_ts
            self._max_timestamp = max_ts
            self._num_records = count
            self._last_offset = count - 1

        def append(self, *args, **kwargs):
            return None                  # closed to further records

    return EncodedRecords


class _LazyEncodedRecords:
    """Builds the kafka-python subclass on first use (kafka imports stay lazy)."""

    cls = None

    def __call__(self, *args):
        if _LazyEncodedRecords.cls is None:
            _LazyEncodedRecords.cls = _encoded_records_class()
        return _LazyEncodedRecords.cls(*args)


_EncodedRecords = _LazyEncodedRecords()
