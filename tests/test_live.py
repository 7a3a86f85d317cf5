"""The live worker against the real broker: equal to the offline replay, through a crash
(SIGKILL) and through a rebalance between two workers, with nothing lost or counted twice."""

from __future__ import annotations

import base64
from collections import Counter
import signal
import time

import orjson
import pytest

from producers.publish import publish_logs
from producers.simulate import Disorder, england, generate
from streams.aggregate import CollectingOutputs
from streams.replay import load_settings_and_rules
from streams.timefmt import parse_ts
from streams.topics import TopicNames
from tests import test_partition as partitioned, test_pipeline
from tests.test_dashboard import api
from tests.test_pipeline import consume, health

worker = test_pipeline.worker      # the same worker-process fixture


def scenario_log(seed: int, days: float = 0.5) -> list[bytes]:
    trusts = [t for t in england() if t.code in ("LAS", "IOW", "NEAS", "SCAS")]
    return list(generate(trusts, parse_ts("2026-01-14T06:00:00Z"), days, seed=seed,
                         disorder=Disorder(within_lateness=0.05, duplicates=0.02,
                                           malformed=0.002),
                         scenario="winter-surge"))


def offline(lines: list[bytes]):
    """What `callstream replay --offline` has written once the watermark has passed
    everything a live worker can close (the live worker never sees an end of input)."""
    settings, rules = load_settings_and_rules(None, None)
    return partitioned.offline(lines, settings, rules)[1]


def stats_order(r: dict):
    return r["end"], r["window"], r["trust"], r["category"]


def alert_order(a: dict):
    return a["at"], a["fingerprint"], a["status"]


def publish(tmp_path, name: str, lines: list[bytes], bootstrap: str, prefix: str) -> None:
    log = tmp_path / name
    log.write_bytes(b"\n".join(lines) + b"\n")
    result = publish_logs([str(log)], bootstrap, prefix, partitions=6)
    assert result.sent == len(lines) and result.failed == 0


def wait_for(predicate, timeout: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def assert_same_as_offline(bootstrap: str, prefix: str, want: CollectingOutputs) -> None:
    topics = TopicNames.with_prefix(prefix)
    stats = [orjson.loads(m.value) for m in
             consume(bootstrap, topics.stats, expected=len(want.stats_records), timeout=180)]
    got_keys = Counter(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in stats)
    want_keys = Counter(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in want.stats_records)
    extra, missing = got_keys - want_keys, want_keys - got_keys
    assert not extra and not missing, (
        f"{sum(extra.values())} records too many, e.g. {list(extra.items())[:3]}; "
        f"{sum(missing.values())} missing, e.g. {list(missing)[:3]}")
    assert sorted(stats, key=stats_order) == sorted(want.stats_records, key=stats_order)
    alerts = [orjson.loads(m.value) for m in
              consume(bootstrap, topics.alerts, expected=len(want.alert_records), timeout=60)]
    assert sorted(alerts, key=alert_order) == sorted(want.alert_records, key=alert_order)
    dead = [orjson.loads(m.value) for m in
            consume(bootstrap, topics.deadletter, expected=len(want.dead_letters), timeout=60)]
    assert sorted(original(d) for d in dead) == sorted(d.raw for d in want.dead_letters)


def original(letter: dict) -> bytes:
    if "raw_base64" in letter:
        return base64.b64decode(letter["raw_base64"])
    return letter["raw"].encode()


def closed_through(ports: list[int]) -> int | None:
    for port in ports:
        h = health(port)
        if h and h.get("merge"):
            return h.get("closed_through")
    return None


@pytest.fixture(scope="module")
def log_lines():
    lines = scenario_log(21)
    want = offline(lines)
    assert len(want.stats_records) > 2000 and want.alert_records and want.dead_letters
    return lines, want


def test_live_output_equals_the_offline_replay(kafka_bootstrap, topic_prefix, worker,
                                               tmp_path, log_lines):
    lines, want = log_lines
    publish(tmp_path, "all.jsonl", lines, kafka_bootstrap, topic_prefix)
    proc, port = worker()
    assert_same_as_offline(kafka_bootstrap, topic_prefix, want)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    assert "Traceback" not in (tmp_path / "worker.log").read_text()


def test_sigkill_mid_log_then_restart_loses_and_repeats_nothing(kafka_bootstrap, topic_prefix,
                                                                worker, tmp_path, log_lines):
    lines, want = log_lines
    third = len(lines) // 3
    publish(tmp_path, "a.jsonl", lines[:third], kafka_bootstrap, topic_prefix)
    proc, port = worker("--checkpoint-every", "1s")
    wait_for(lambda: (health(port) or {}).get("stats", 0) > 0, what="first stats")
    time.sleep(2.5)                                       # a snapshot or two, then more input
    publish(tmp_path, "b.jsonl", lines[third:2 * third], kafka_bootstrap, topic_prefix)
    wait_for(lambda: (health(port) or {}).get("events", 0) > third, what="second part read")
    proc.kill()                                           # SIGKILL: no snapshot, no goodbye
    proc.wait(10)
    publish(tmp_path, "c.jsonl", lines[2 * third:], kafka_bootstrap, topic_prefix)
    worker("--checkpoint-every", "1s")
    assert_same_as_offline(kafka_bootstrap, topic_prefix, want)


def test_second_worker_joins_mid_stream_then_first_leaves(kafka_bootstrap, topic_prefix,
                                                          worker, tmp_path, log_lines):
    lines, want = log_lines
    third = len(lines) // 3
    publish(tmp_path, "a.jsonl", lines[:third], kafka_bootstrap, topic_prefix)
    first, port_a = worker()
    wait_for(lambda: (health(port_a) or {}).get("stats", 0) > 0, what="first stats")
    second, port_b = worker()                             # rebalance: partitions split
    wait_for(lambda: (health(port_b) or {}).get("partitions"), what="second worker's share")
    publish(tmp_path, "b.jsonl", lines[third:2 * third], kafka_bootstrap, topic_prefix)
    wait_for(lambda: (health(port_b) or {}).get("events", 0) > 0, what="second worker reading")

    def both_answer_alike():
        # any worker answers for the whole system: the same stats from both web servers
        a, b = api(port_a, "/api/stats"), api(port_b, "/api/stats")
        return a is not None and a.get("stats") and a == b
    wait_for(both_answer_alike, timeout=60, what="both workers' API to agree")
    first.send_signal(signal.SIGTERM)                     # and back to one worker
    assert first.wait(60) == 0
    publish(tmp_path, "c.jsonl", lines[2 * third:], kafka_bootstrap, topic_prefix)
    assert_same_as_offline(kafka_bootstrap, topic_prefix, want)
    assert second.poll() is None
