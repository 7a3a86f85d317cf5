"""Integration: a log with good and bad lines through the real broker and the Faust worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import orjson
import pytest

from producers.publish import publish_logs
from streams.broker import free_port
from streams.topics import TopicNames
from tests.helpers import arrived, received, triaged

GOOD = [received("g1", 0), triaged("g1", 1, "C2"), arrived("g1", 9),
        received("g2", 2, "EEAST"), triaged("g2", 3, None, "hear_and_treat"),
        received("g3", 40)]  # pushes the watermark past the first 15-minute window
BAD = {
    "malformed_json": b'{"type": "call_received", "call_id": "b1", ',
    "bad_field": b'{"type": "crew_arrived", "call_id": 12345, "ts": 1768377600000}',
    "unknown_type": b'{"type": "crew_left", "call_id": "b3", "ts": 1768377600000}',
    "missing_field": b'{"type": "triaged", "ts": 1768377600000, "category": "C1"}',
    "oversized": b'{"type": "crew_arrived", "call_id": "b5", "ts": 1768377600000, "pad": "'
                 + b"x" * (1024 * 1024) + b'"}',
}


def consume(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> list:
    from kafka import KafkaConsumer
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             max_partition_fetch_bytes=16 * 1024 * 1024,
                             fetch_max_bytes=64 * 1024 * 1024, consumer_timeout_ms=1000)
    records = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(records) < expected:
            records.extend(list(consumer))
        # a little longer: anything beyond `expected` is a failure too
        records.extend(list(consumer))
    finally:
        consumer.close()
    return records


@pytest.fixture
def worker(kafka_bootstrap, topic_prefix, tmp_path):
    procs = []

    def start(*extra: str):
        port = free_port()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        n = len(procs)
        name = "worker" if n == 0 else f"worker{n + 1}"     # one log and state dir each
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker", "--bootstrap", kafka_bootstrap,
             "--topic-prefix", topic_prefix, "--web-port", str(port),
             "--data-dir", str(tmp_path / name), "--idle-timeout", "1s",
             "--checkpoint-every", "2s", *extra],
            stdout=open(tmp_path / f"{name}.log", "wb"), stderr=subprocess.STDOUT, env=env)
        procs.append(proc)
        return proc, port

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def health(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return orjson.loads(r.read())
    except OSError:
        return None


def test_good_and_bad_lines_through_the_real_broker(kafka_bootstrap, topic_prefix, worker,
                                                    tmp_path):
    log = tmp_path / "events.jsonl"
    lines = GOOD[:3] + [BAD["malformed_json"], BAD["bad_field"]] + GOOD[3:5] \
        + [BAD["unknown_type"], BAD["missing_field"], BAD["oversized"]] + GOOD[5:]
    log.write_bytes(b"\n".join(lines) + b"\n")
    result = publish_logs([str(log)], kafka_bootstrap, topic_prefix, partitions=6)
    assert result.sent == len(lines) and result.failed == 0

    proc, port = worker()
    topics = TopicNames.with_prefix(topic_prefix)
    dead = consume(kafka_bootstrap, topics.deadletter, expected=len(BAD))
    letters = [orjson.loads(m.value) for m in dead]
    assert sorted(d["reason"] for d in letters) == sorted(BAD)
    for d, m in zip(letters, dead):
        original = BAD[d["reason"]]
        assert d["raw"].encode() == original                 # original bytes, unchanged
        assert d["source"] in topics.inputs and d["partition"] >= 0 and d["offset"] >= 0
        assert d["detail"]
    by_reason = {d["reason"]: (d, m) for d, m in zip(letters, dead)}
    assert by_reason["unknown_type"][1].key == b"b3"          # original key kept
    assert by_reason["missing_field"][1].key is None

    # the good events were processed: the first 15-minute window came out on calls.stats
    stats = [orjson.loads(m.value) for m in consume(kafka_bootstrap, topics.stats, expected=1)]
    c2 = [r for r in stats if r["window"] == "15m" and r["category"] == "C2" and r["trust"] == "LAS"]
    assert c2 and c2[0]["count"] == 1 and c2[0]["mean_s"] == 480.0
    totals = [r for r in stats if r["window"] == "15m" and r["category"] == "ALL" and r["trust"] == "*"]
    assert totals[0]["calls"] == 2 and totals[0]["hear_and_treat"] == 1

    deadline = time.monotonic() + 30
    h = None
    while time.monotonic() < deadline:
        h = health(port)
        if h and h["events"] == len(lines):
            break
        time.sleep(0.5)
    assert h is not None and h["events"] == len(lines) and h["dead_letters"] == len(BAD)

    # the worker keeps going after bad input, and stops cleanly on SIGTERM
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    log_text = (tmp_path / "worker.log").read_text()
    assert "Traceback" not in log_text


def test_worker_with_unreachable_broker_is_one_line():
    port = free_port()
    r = subprocess.run([sys.executable, "-m", "streams.cli", "worker", "--bootstrap",
                        f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "cannot reach Kafka" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0


ALERT_RULES = """
[alerts]
include_defaults = false
[alerts.rules.c1_redirected]
metric = "c1_redirected"
warning = 0
window = "15m"
min_sample = 0
"""


def test_live_alerts_are_the_offline_alerts(kafka_bootstrap, topic_prefix, worker, tmp_path):
    """The worker calls the same rule evaluator as the replay: same records, keyed by fingerprint."""
    from streams.replay import load_settings_and_rules, process_lines
    cfg = tmp_path / "rules.toml"
    cfg.write_text(ALERT_RULES)
    lines = GOOD[:5] + [received("r1", 5), triaged("r1", 6, "C1", "redirect", redirect_to="EEAST")] \
        + GOOD[5:]
    settings, rules = load_settings_and_rules(str(cfg), None)
    offline = process_lines(lines, settings, rules)[1].alert_records
    assert [(a["status"], a["labels"]["trust"]) for a in offline] == [("firing", "*"),
                                                                       ("firing", "LAS")]
    log = tmp_path / "events.jsonl"
    log.write_bytes(b"\n".join(lines) + b"\n")
    publish_logs([str(log)], kafka_bootstrap, topic_prefix, partitions=6)
    proc, _ = worker("--config", str(cfg))
    topics = TopicNames.with_prefix(topic_prefix)
    live = consume(kafka_bootstrap, topics.alerts, expected=len(offline))
    # one partition per fingerprint keeps each alert's changes in order; across alerts the
    # consumer may interleave partitions, so compare in a fixed order
    def order(a):
        return a["at"], a["fingerprint"]
    assert sorted((orjson.loads(m.value) for m in live), key=order) == sorted(offline, key=order)
    assert sorted(m.key.decode() for m in live) == sorted(a["fingerprint"] for a in offline)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
