"""The Kafka adapter of the live view: output topics into a LiveView, health facts measured
against the real broker (lag, broker loss)."""

from __future__ import annotations

import asyncio
import time

import orjson

from producers.kafka_io import ensure_topics, make_producer
from streams.broker import LocalBroker, free_port
from streams.feed import LiveView
from streams.topics import TopicNames
from streams.windows import stats_key
from streams.web.topicfeed import (MissingTopics, RateMeter, TopicFeed, lag_and_position,
                                   superseding)
from tests.test_feed import MIN, T0, alert_rec, stats_rec, totals_rec


def test_lag_counts_uncommitted_partitions_from_zero():
    end = {("t", 0): 10, ("t", 1): 5, ("t", 2): 0, ("t", 3): 7}
    committed = {("t", 0): 4, ("t", 1): -1, ("t", 3): 9}      # 9 > end: clamp (truncated log)
    assert lag_and_position(end, committed) == (6 + 5 + 0 + 0, 4 + 0 + 0 + 7)


def test_rate_meter_uses_the_last_span():
    meter = RateMeter(span_s=10.0)
    assert meter.add(0.0, 0) is None
    for t in range(1, 31):
        rate = meter.add(float(t), 100 * t)                    # 100 events/s throughout
    assert rate == 100.0 and meter.samples[0][0] >= 19         # older samples dropped
    assert meter.add(40.0, 3000) == 0.0                        # a stall: nothing processed


def test_superseded_stats_leave_the_view_as_reading_them_all_would():
    """A fetch of many windows per key: parsing only what `superseding` keeps, and handing
    the trend window's earlier records over as bytes, gives the same latest stats, totals
    and trend points as parsing every record."""
    from collections import namedtuple
    Msg = namedtuple("Msg", "key value")
    records = []
    for end in range(60, 60 + 15 * 40, 15):
        for trust in ("LAS", "*"):
            for window in ("15m", "1h", "24h"):
                records.append(stats_rec(end, trust=trust, window=window,
                                         mean_s=1000.0 + end, p90_s=2000.0 + end))
                records.append(totals_rec(end, trust=trust, window=window, calls=end))
    msgs = [Msg(stats_key(r), orjson.dumps(r)) for r in records]
    msgs.append(Msg(None, orjson.dumps(stats_rec(30, trust="NWAS"))))   # unkeyed: kept
    everything, conflated = LiveView(), LiveView()
    for m in msgs:
        everything.on_stats(orjson.loads(m.value))
    kept, trend = superseding([m.key for m in msgs], b"/" + conflated.trend_window.encode())
    for key, indexes in trend.items():
        conflated.on_trend_records(key, [msgs[i].value for i in indexes])
    for i in kept:
        conflated.on_stats(orjson.loads(msgs[i].value))
    # the last of each key (2 trusts x 3 windows x (stats, totals)) and the unkeyed one; the
    # earlier trend-window category records of each trust
    assert len(kept) == 2 * 3 * 2 + 1 and kept == sorted(kept)
    assert sorted(trend) == [b"*/C2/1h", b"LAS/C2/1h"]
    assert all(len(ix) == 39 and ix == sorted(ix) for ix in trend.values())
    assert conflated.stats == everything.stats and conflated.totals == everything.totals
    assert conflated.trends == everything.trends and conflated.trends
    assert conflated.stats_list() == everything.stats_list()
    assert conflated.trends_list() == everything.trends_list()


def test_a_backlog_of_trend_records_keeps_a_day_and_parses_little(monkeypatch):
    """A worker catching up hands over weeks of trend records: what it keeps (and shows) is
    the trend span's worth, as parsing them all would keep, and most are never parsed."""
    import streams.feed as feed
    parsed = []
    real = feed.parse_json
    monkeypatch.setattr(feed, "parse_json", lambda v: parsed.append(v) or real(v))
    everything, lazy = LiveView(), LiveView()
    values = [orjson.dumps(stats_rec(end, mean_s=float(end))) for end in range(60, 60 * 24 * 14)]
    for v in values:
        everything.on_stats(orjson.loads(v))
    for i in range(0, len(values) - 1, 97):                 # fetch by fetch
        lazy.on_trend_records(b"LAS/C2/1h", values[i:min(i + 97, len(values) - 1)])
    lazy.on_stats(orjson.loads(values[-1]))
    assert len(parsed) < len(values) / 8, len(parsed)
    assert lazy.trends == everything.trends
    points = lazy.trends[("LAS", "C2")]
    assert len(points) == 24 * 60 and points[-1].end_ms == T0 + (60 * 24 * 14 - 1) * MIN
    assert len(parsed) < len(values) / 4


def test_unreadable_trend_records_are_counted_not_kept():
    lazy = LiveView()
    values = [orjson.dumps(stats_rec(end)) for end in range(60, 60 + 300)]
    values[150] = b"{not json"
    lazy.on_trend_records(b"LAS/C2/1h", values)
    assert len(lazy.trends[("LAS", "C2")]) == 299 and lazy.ignored == 1


def test_a_request_timing_out_at_startup_is_retried_and_a_missing_topic_is_not():
    """A broker slow to answer while the feed starts (the worker's event loop was busy, or
    the broker was) once crashed the whole worker; now it is retried and shown on /health."""
    from aiokafka.errors import RequestTimedOutError
    live = LiveView()
    feed = TopicFeed(live, "127.0.0.1:1", TopicNames.with_prefix("x."), "g")
    calls = []

    async def assign():
        calls.append(live.facts.broker_connected)
        if len(calls) == 1:
            raise RequestTimedOutError()

    async def missing():
        raise MissingTopics("live feed: topics without partitions: x.calls.stats")

    async def run():
        await feed._until_connected(assign)
        assert calls == [None, False]            # retried, with the broker shown as lost
        try:
            await feed._until_connected(missing)
        except MissingTopics:
            return True
        return False

    assert asyncio.run(run())


async def until(cond, timeout: float, task) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if task.done():
            task.result()                                      # surface the feed's exception
        if cond():
            return True
        await asyncio.sleep(0.1)
    return bool(cond())


async def stop(task) -> None:
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


def test_feed_reads_output_topics_and_measures_lag(kafka_bootstrap, topic_prefix):
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    topics = TopicNames.with_prefix(topic_prefix)
    ensure_topics(kafka_bootstrap, topics, 3)
    producer = make_producer(kafka_bootstrap)
    # history written before the feed starts: alerts are read from the beginning
    for rec in (alert_rec("a" * 16, at_min=1), alert_rec("b" * 16, at_min=2),
                alert_rec("b" * 16, status="resolved", at_min=3)):   # keyed like the worker's
        producer.send(topics.alerts, orjson.dumps(rec), key=rec["fingerprint"].encode())
    producer.send(topics.stats, orjson.dumps(stats_rec(60, mean_s=1111.0)))
    # ten input events on partition 0, of which the worker group has committed four
    for _ in range(10):
        producer.send(topics.received, b"{}", partition=0)
    producer.flush()
    group = f"{topic_prefix}callstream"
    committer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group,
                              enable_auto_commit=False)
    committer.commit({TopicPartition(topics.received, 0): OffsetAndMetadata(4, None, -1)})
    committer.close()

    def dead_letter(reason: str, raw: str) -> bytes:
        return orjson.dumps({"reason": reason, "detail": "x", "source": "s", "offset": 1,
                             "raw": raw})

    producer.send(topics.deadletter, dead_letter("before_this_worker", "OLD")).get(10)
    time.sleep(0.05)
    live = LiveView()
    feed = TopicFeed(live, kafka_bootstrap, topics, group, watermark=lambda: 1_768_400_000_000,
                     probe_every_s=0.2)
    time.sleep(0.05)
    # written after the worker started but before the feed runs: counted, not skipped
    producer.send(topics.deadletter, dead_letter("oversized", "RAW-BYTES")).get(10)

    def produce_more():
        producer.send(topics.stats, orjson.dumps(totals_rec(75, calls=77)))
        producer.send(topics.deadletter, dead_letter("malformed_json", "RAW-BYTES"))
        producer.send(topics.deadletter, b"not json at all")
        producer.flush()

    async def main():
        task = asyncio.create_task(feed.run())
        try:
            assert await until(lambda: live.facts.consumer_lag is not None
                               and live.alerts()["active"] and live.stats_list(), 30, task)
            await asyncio.get_running_loop().run_in_executor(None, produce_more)
            assert await until(lambda: live.totals_list() and sum(live.dead_letters.values()) == 3,
                               30, task)
        finally:
            await stop(task)

    try:
        asyncio.run(main())
    finally:
        producer.close()
    assert [a["fingerprint"] for a in live.alerts()["active"]] == ["a" * 16]
    assert [(a["fingerprint"], a["status"]) for a in live.alerts()["recent"]] == \
        [("b" * 16, "resolved"), ("b" * 16, "firing"), ("a" * 16, "firing")]
    assert live.stats_list()[0]["mean_s"] == 1111.0
    assert live.totals_list()[0]["calls"] == 77
    assert live.dead_letters == {"oversized": 1, "malformed_json": 1, "unknown": 1}
    assert live.facts.consumer_lag == 6 and live.facts.broker_connected is True
    assert live.facts.watermark_ms == 1_768_400_000_000
    assert b"RAW-BYTES" not in orjson.dumps([live.health(), live.stats_list(), live.alerts()])


def test_broker_loss_is_reported(kafka_jars, tmp_path):
    """A private broker (the session one must stay up): stop it, and the feed says so."""
    port, controller = free_port(), free_port()
    broker = LocalBroker(tmp_path / "broker", port=port, controller_port=controller)
    broker.start(timeout=90, die_with_parent=True)
    try:
        topics = TopicNames.with_prefix("loss.")
        ensure_topics(broker.bootstrap, topics, 1)
        live = LiveView()
        feed = TopicFeed(live, broker.bootstrap, topics, "loss.callstream", probe_every_s=0.2,
                         request_timeout_s=2.0)

        async def main():
            task = asyncio.create_task(feed.run())
            try:
                assert await until(lambda: live.facts.broker_connected, 30, task)
                await asyncio.get_running_loop().run_in_executor(None, broker.stop)
                assert await until(lambda: live.facts.broker_connected is False, 30, task)
                assert live.health()["broker_connected"] is False
            finally:
                await stop(task)
        asyncio.run(main())
    finally:
        broker.stop()
