"""Fetched records as `RecordRun`s (columns over the fetch's bytes) from an aiokafka consumer.

A consumer made with `value_deserializer=RAW_RUNS` returns, from `getmany`, one `RecordRun`
per topic partition and fetch instead of a `ConsumerRecord` per record; everything else
(group membership, rebalances, positions, pause, seek, commits) is aiokafka's, unchanged.

aiokafka builds a partition's records in `aiokafka.consumer.fetcher` from two names of that
module, `MemoryRecords` (the fetch's bytes) and `PartitionRecords` (the iterator `getmany`
drains). Both are replaced here by subclasses that keep the bytes and, only for a consumer
asking for runs, yield one parsed run; every other consumer in the process (Faust's own,
the dashboard's) reads records exactly as before. A fetch the parser does not take
(compressed, an older format) is read through aiokafka's records and converted, so a run is
always what comes back. aiokafka is pinned to 0.14.x (pyproject.toml), whose fetcher has
this shape; `install` checks it and refuses with a clear error otherwise."""

from __future__ import annotations

import inspect

from streams.errors import CallstreamError
from streams.fast.recordbatch import CORRUPT, MALFORMED, OK, RecordRun


class _RawRuns:
    """Marker value deserializer: asks for runs. Called per record only on the fallback path
    (a compressed fetch), where it leaves the value as bytes."""

    def __call__(self, value):
        return value

    def __repr__(self) -> str:
        return "RAW_RUNS"


RAW_RUNS = _RawRuns()
_EXPECTED = ["self", "tp", "records", "aborted_transactions", "fetch_offset",
             "key_deserializer", "value_deserializer", "check_crcs", "isolation_level"]
_installed = False


def install() -> None:
    """Put the run-aware classes into aiokafka's fetcher module (once per process)."""
    global _installed
    if _installed:
        return
    from aiokafka import errors as Errors
    from aiokafka.consumer import fetcher

    base_records, base_partition = fetcher.MemoryRecords, fetcher.PartitionRecords
    if list(inspect.signature(base_partition.__init__).parameters) != _EXPECTED:
        raise CallstreamError(
            "this aiokafka's fetcher is not the one callstream reads batches from "
            "(aiokafka 0.14.x): install the version pyproject.toml names")

    class KeptMemoryRecords(base_records):
        """aiokafka's MemoryRecords, also keeping the fetch's bytes."""

        def __init__(self, data):
            super().__init__(data)
            self.data = data

    class RunPartitionRecords(base_partition):
        """aiokafka's PartitionRecords; for a RAW_RUNS consumer, one `RecordRun`."""

        def __init__(self, tp, records, aborted_transactions, fetch_offset, key_deserializer,
                     value_deserializer, check_crcs, isolation_level):
            super().__init__(tp, records, aborted_transactions, fetch_offset,
                             key_deserializer, value_deserializer, check_crcs,
                             isolation_level)
            if value_deserializer is RAW_RUNS:
                self._records_iterator = self._run(getattr(records, "data", None),
                                                   fetch_offset)

        def _run(self, data, fetch_offset):
            tp = self._tp
            run, nxt, status = (RecordRun.parse(tp.topic, tp.partition, data, fetch_offset,
                                                self._check_crcs)
                                if data is not None else (None, fetch_offset, -1))
            if status == OK:
                # the position moves before the run is handed out: `getall` may stop
                # draining right after it
                self.next_fetch_offset = nxt
                if len(run):
                    yield run
                return
            if status == CORRUPT:
                raise Errors.CorruptRecordException(f"Invalid CRC - {tp}")
            if status == MALFORMED:
                raise Errors.CorruptRecordException(f"Malformed record batch - {tp}")
            # compressed or an older format: aiokafka's own records, as one run
            records = list(self._unpack_records())
            if records:
                yield RecordRun.from_records(tp.topic, tp.partition, records)

    fetcher.MemoryRecords = KeptMemoryRecords
    fetcher.PartitionRecords = RunPartitionRecords
    _installed = True
