"""Replaying logs to Kafka: the bulk wire encoding against kafka-python's own (pure Python)
implementation, pacing, and - against the real broker - keys, timestamps, bytes, order per
key, Ctrl-C with resume, and one-line errors."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict

import numpy as np
import orjson
import pytest
from hypothesis import given, settings, strategies as st

from producers import wire
from producers.kafka_io import _EncodedRecords
from producers.publish import Pacer, publish_logs, route
from producers.simulate import Disorder, TrustProfile, default_profile, generate, simulate
from streams.broker import free_port
from streams.timefmt import parse_ts
from streams.topics import TopicNames

START = parse_ts("2026-01-14T06:00:00.000Z")


# -- wire format, no broker --------------------------------------------------------------------
def packed(items: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    off = np.zeros(len(items) + 1, np.int64)
    np.cumsum([len(x) for x in items], out=off[1:])
    return np.frombuffer(b"".join(items) or b"\0", np.uint8), off


@settings(max_examples=60, deadline=None)
@given(keys=st.lists(st.binary(min_size=0, max_size=80), min_size=1, max_size=50),
       n=st.integers(1, 64))
def test_partitions_match_kafka_default_partitioner(keys, n):
    from kafka.partitioner.default import murmur2
    buf, off = packed(keys)
    got = wire.partitions_for_keys(buf, off, n)
    assert got.tolist() == [(murmur2(k) & 0x7FFFFFFF) % n for k in keys]


records_strategy = st.lists(
    st.tuples(st.one_of(st.none(), st.binary(min_size=1, max_size=40)),
              st.binary(min_size=0, max_size=300),
              st.integers(1_500_000_000_000, 1_900_000_000_000)),
    min_size=1, max_size=40)


def encode(records, max_bytes=1 << 30):
    keys = [k for k, _, _ in records]
    vbuf, voff = packed([v for _, v, _ in records])
    kbuf, koff = packed([k or b"" for k in keys])
    null = np.array([k is None for k in keys])
    ts = np.array([t for _, _, t in records], np.int64)
    n = len(records)
    order = np.arange(n, dtype=np.int64)
    out = np.empty(len(vbuf) + len(kbuf) + 40 * n, np.uint8)
    arrays = [np.empty(n, np.int64) for _ in range(7)]
    nb = wire.encode_batches(vbuf, voff, kbuf, koff, null, ts, order, np.zeros(n, np.int64),
                             max_bytes, out, *arrays)
    g, count, start, end, first_ts, max_ts, first = (a[:nb] for a in arrays)
    return [(out[s:e].tobytes(), int(c), int(f), int(m)) for s, e, c, f, m in
            zip(start, end, count, first_ts, max_ts)]


@settings(max_examples=60, deadline=None)
@given(records=records_strategy)
def test_encoded_batch_is_byte_identical_to_kafka_python(records):
    from kafka.record.default_records import DefaultRecordBatchBuilder
    ref = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False,
                                    producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                    batch_size=1 << 30)
    for i, (k, v, t) in enumerate(records):
        assert ref.append(i, timestamp=t, key=k, value=v, headers=[]) is not None
    ref.set_producer_state(4242, 3, 17, False)             # as the idempotent sender does
    [(body, count, first_ts, max_ts)] = encode(records)
    ours = _EncodedRecords(body, count, first_ts, max_ts, 1 << 20)
    ours.set_producer_state(4242, 3, 17, False)
    assert bytes(ours.build()) == bytes(ref.build())       # header, CRC and records


def test_batches_split_by_size_and_decode_back():
    from kafka.record.memory_records import MemoryRecords
    rng = np.random.default_rng(1)
    records = [(f"call-{i % 37}".encode(), bytes(rng.integers(32, 127, rng.integers(50, 400))),
                1_768_000_000_000 + int(rng.integers(-5000, 5000))) for i in range(500)]
    records.append((b"big", b"x" * 20_000, 1_768_000_000_000))   # alone in its batch
    batches = encode(records, max_bytes=8192)
    assert len(batches) > 10
    decoded = []
    for body, count, first_ts, max_ts in batches:
        b = _EncodedRecords(body, count, first_ts, max_ts, 8192)
        built = bytes(b.build())
        assert len(built) <= 8192 or count == 1
        [batch] = list(MemoryRecords(built))
        batch.validate_crc()
        decoded += [(r.key, r.value, r.timestamp) for r in batch]
    assert decoded == records


def test_pacer_follows_event_time_and_ignores_outliers():
    p = Pacer(speed=60.0)
    assert p.due(1_000_000) is None                           # the first record sets the origin
    t0 = p.origin_wall
    assert p.due(1_060_000) == pytest.approx(t0 + 1.0)        # a minute of events in 1 s
    assert p.due(1_030_000) == pytest.approx(t0 + 1.0)        # out of order: no waiting back
    assert p.due(1_060_000 + 2 * 86_400_000) is None          # a wild timestamp: no 2-day wait
    assert p.due(1_120_000) == pytest.approx(t0 + 2.0)
    assert p.due(None) is None


def test_route_reads_type_key_and_time_and_sends_the_rest_to_received():
    assert route(b'{"type":"triaged","call_id":"c1","ts":"2026-01-14T08:00:00.000Z"}') == \
        (1, b"c1", parse_ts("2026-01-14T08:00:00.000Z"))
    assert route(b'{"type":"crew_arrived","call_id":"c2","ts":1768377600000}')[0] == 2
    assert route(b'{"type":"nope","call_id":"c3"}') == (0, b"c3", None)
    assert route(b'{"type": ') == (0, None, None)
    assert route(b"[1,2]") == (0, None, None)


# -- against the real broker -------------------------------------------------------------------
def write_log(path, lines):
    path.write_bytes(b"\n".join(lines) + b"\n")


def consume_all(bootstrap: str, topics: TopicNames, expected: int, timeout: float = 60.0,
                check_extra: bool = True):
    """Records of the input topics, until `expected` came (then a little longer, so that any
    record beyond `expected` is seen too, unless `check_extra` is off)."""
    from kafka import KafkaConsumer
    consumer = KafkaConsumer(*topics.inputs, bootstrap_servers=bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=1500,
                             max_partition_fetch_bytes=16 << 20, fetch_max_bytes=64 << 20)
    got = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(got) < expected:
            for m in consumer:
                got.append(m)
                if not check_extra and len(got) >= expected:
                    return got
        if check_extra:
            got.extend(consumer)
    finally:
        consumer.close()
    return got


def test_replay_keeps_keys_timestamps_bytes_and_order_per_key(kafka_bootstrap, topic_prefix,
                                                              tmp_path):
    lines = list(generate([TrustProfile("LAS", 3000), TrustProfile("EEAST", 2000)], START, 0.25,
                          seed=3, disorder=Disorder(within_lateness=0.05, duplicates=0.01,
                                                    malformed=0.01)))
    log = tmp_path / "a.jsonl"
    write_log(log, lines)
    result = publish_logs([str(log)], kafka_bootstrap, topic_prefix, partitions=4)
    assert result.sent == len(lines) and result.failed == 0 and not result.interrupted
    topics = TopicNames.with_prefix(topic_prefix)
    got = consume_all(kafka_bootstrap, topics, len(lines))
    assert len(got) == len(lines)
    assert Counter(m.value for m in got) == Counter(lines)    # the original bytes, each once
    by_name = {"call_received": topics.received, "triaged": topics.triaged,
               "crew_arrived": topics.arrived}
    expected = defaultdict(list)
    last_ts = None
    for line in lines:
        try:
            e = orjson.loads(line)
            topic = by_name.get(e.get("type"), topics.received)
            key = e["call_id"].encode() if isinstance(e.get("call_id"), str) else None
            ts = parse_ts(e.get("ts"))
        except (orjson.JSONDecodeError, AttributeError):
            topic, key, ts = topics.received, None, None
        ts = last_ts if ts is None else ts                 # unroutable: the previous time
        last_ts = ts
        expected[(topic, key)].append((line, ts))
    seen = defaultdict(list)
    partition_of = defaultdict(set)
    for m in sorted(got, key=lambda m: (m.topic, m.partition, m.offset)):
        seen[(m.topic, m.key)].append((m.value, m.timestamp))
        partition_of[m.key].add(m.partition)
    for k, v in expected.items():
        if k[1] is not None:
            assert seen[k] == v, k                   # same order, same timestamps, per key
    assert all(len(p) == 1 for k, p in partition_of.items() if k is not None)  # co-partitioned
    assert Counter(v for (t, k), vs in seen.items() if k is None for v, _ in vs) == \
        Counter(line for (t, k), vs in expected.items() if k is None for line, _ in vs)


def test_ctrl_c_flushes_reports_and_resume_completes_exactly_once(kafka_bootstrap, topic_prefix,
                                                                  tmp_path):
    lines = list(generate([TrustProfile("LAS", 20_000)], START, 2 / 24, seed=8))
    log = tmp_path / "paced.jsonl"
    write_log(log, lines)
    base = [sys.executable, "-m", "streams.cli", "replay", str(log), "--bootstrap",
            kafka_bootstrap, "--topic-prefix", topic_prefix]
    # two hours of calls (arrivals run on for hours) at 400x: minutes of wall time unless
    # interrupted, which happens once the first records are on the broker
    proc = subprocess.Popen(base + ["--speed", "400"], stderr=subprocess.PIPE, text=True)
    topics = TopicNames.with_prefix(topic_prefix)
    started = consume_all(kafka_bootstrap, topics, 200, timeout=60, check_extra=False)
    assert 200 <= len(started) < len(lines), len(started)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    m = re.search(r"resume with --from-line (\d+)", err)
    assert m and "Traceback" not in err, err
    resume = int(m.group(1))
    assert 200 < resume < len(lines)
    first = consume_all(kafka_bootstrap, topics, resume - 1, timeout=30)
    assert Counter(x.value for x in first) == Counter(lines[:resume - 1])   # flushed, no more
    r = subprocess.run(base + ["--from-line", str(resume)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"published {len(lines) - resume + 1:,} events" in r.stderr
    everything = consume_all(kafka_bootstrap, topics, len(lines))
    assert Counter(x.value for x in everything) == Counter(lines)   # each line exactly once


def test_simulate_publishes_to_kafka(kafka_bootstrap, topic_prefix):
    r = subprocess.run([sys.executable, "-m", "streams.cli", "simulate", "--trusts", "LAS",
                        "--hours", "2", "--seed", "4", "--duplicates", "0.01", "--kafka", "--max",
                        "--bootstrap", kafka_bootstrap, "--topic-prefix", topic_prefix],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # the same log, generated from Python
    expected = list(simulate([default_profile("LAS")], parse_ts("2026-01-14T00:00:00Z"), 2 / 24,
                             seed=4, disorder=Disorder(duplicates=0.01)).lines())
    assert f"published {len(expected):,} events" in r.stderr
    got = consume_all(kafka_bootstrap, TopicNames.with_prefix(topic_prefix), len(expected))
    assert Counter(m.value for m in got) == Counter(expected)


# -- one-line errors ---------------------------------------------------------------------------
def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line(r, text):
    assert r.returncode != 0
    assert text in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0, r.stderr


def test_unreachable_broker_is_one_line(tmp_path):
    log = tmp_path / "a.jsonl"
    write_log(log, list(generate([TrustProfile("LAS", 500)], START, 0.05, seed=1)))
    port = free_port()
    assert_one_line(cli("replay", str(log), "--bootstrap", f"127.0.0.1:{port}"),
                    "cannot reach Kafka")
    assert_one_line(cli("simulate", "--hours", "1", "--kafka", "--bootstrap",
                        f"127.0.0.1:{port}"), "cannot reach Kafka")
    assert_one_line(cli("replay", str(log), "--bootstrap", "localhost"), "is not HOST:PORT")


def test_missing_log_and_bad_options_are_one_line(tmp_path):
    assert_one_line(cli("replay", str(tmp_path / "nope.jsonl")), "does not exist")
    log = tmp_path / "a.jsonl"
    write_log(log, [b"{}"])
    assert_one_line(cli("replay", str(log), "--from-line", "0"), "--from-line must be 1")
    assert_one_line(cli("replay", str(log), "--speed", "0"), "--speed must be a positive")
    assert_one_line(cli("simulate", "--hours", "1", "--out", str(tmp_path / "x.jsonl"),
                        "--speed", "2"), "use them with --kafka")
