"""Prometheus /metrics: scraped over HTTP, parsed with prometheus-client's own parser and
compared with the records the view was fed (pandas keeps the latest window independently)."""

from __future__ import annotations

import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from producers.simulate import TrustProfile, generate
from streams.alertmanager import SenderStats
from streams.feed import TARGETS, HealthFacts, LiveView
from streams.metrics import make_registry, render
from streams.replay import process_lines
from streams.settings import ProcessingSettings
from streams.timefmt import parse_ts
from tests.test_feed import T0, FakeClock, alert_rec
from tests.test_web import serve


def samples(text: str) -> dict:
    """(name, frozenset(labels)) -> value."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def by_name(got: dict, name: str) -> dict:
    return {labels: v for (n, labels), v in got.items() if n == name}


@pytest.fixture(scope="module")
def replay_records():
    lines = list(generate([TrustProfile("LAS", 3000.0), TrustProfile("YAS", 2000.0)], T0, 0.4,
                          seed=5))
    _, out = process_lines(lines, ProcessingSettings())
    return out.stats_records


def test_window_gauges_match_the_latest_records(replay_records):
    live = LiveView()
    for rec in replay_records:
        live.on_stats(rec)

    async def scrape(c):
        r = await c.get("/metrics")
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return await r.text()
    got = samples(serve(live, scrape))

    df = pd.DataFrame([r for r in replay_records if r["category"] != "ALL"])
    df["end_ms"] = df["end"].map(parse_ts)
    latest = df.sort_values("end_ms").groupby(["trust", "category", "window"]).tail(1)
    count = by_name(got, "callstream_window_responses")
    mean = by_name(got, "callstream_window_response_mean_seconds")
    cent = by_name(got, "callstream_window_response_seconds")
    assert len(count) == len(latest)
    for row in latest.itertuples():
        key = frozenset({"trust": row.trust, "category": row.category, "window": row.window}.items())
        assert count[key] == row.count
        if row.count:
            assert mean[key] == row.mean_s
            assert cent[key | {("quantile", "0.9")}] == row.p90_s
            assert cent[key | {("quantile", "0.99")}] == row.p99_s
        else:
            assert key not in mean

    # pressure: the waiting calls of each (trust, category)'s latest window of any length
    waiting = by_name(got, "callstream_calls_waiting")
    has_wait = df[df["waiting"].notna()].sort_values("end_ms")
    newest = has_wait.groupby(["trust", "category"]).tail(1)
    assert len(waiting) == len(newest)
    for row in newest.itertuples():
        ends = has_wait[(has_wait.trust == row.trust) & (has_wait.category == row.category)]
        assert row.end_ms == ends["end_ms"].max()
        assert waiting[frozenset({"trust": row.trust, "category": row.category}.items())] == row.waiting

    tot = pd.DataFrame([r for r in replay_records if r["category"] == "ALL"])
    tot["end_ms"] = tot["end"].map(parse_ts)
    last = tot.sort_values("end_ms").groupby(["trust", "window"]).tail(1)
    hat = by_name(got, "callstream_window_hear_and_treat_ratio")
    for row in last.itertuples():
        key = frozenset({"trust": row.trust, "window": row.window}.items())
        assert by_name(got, "callstream_window_calls")[key] == row.calls
        if row.calls:
            assert hat[key] == pytest.approx(row.hear_and_treat / row.calls)

    targets = by_name(got, "callstream_target_seconds")
    assert targets[frozenset({"category": "C2", "measure": "mean"}.items())] == TARGETS["C2"].mean_s
    assert targets[frozenset({"category": "C4", "measure": "p90"}.items())] == TARGETS["C4"].p90_s


def test_alert_health_dead_letter_and_alertmanager_metrics():
    clock = FakeClock()
    live = LiveView(clock=clock, stale_after_s=300)
    live.on_alert(alert_rec("a" * 16, at_min=1))
    live.on_alert(alert_rec("b" * 16, at_min=2, severity="critical"))
    live.on_alert(alert_rec("b" * 16, status="resolved", at_min=3, severity="critical"))
    live.on_alert(alert_rec("c" * 16, at_min=4, severity="critical"))
    for reason in ("malformed_json", "malformed_json", "oversized"):
        live.on_dead_letter(reason)
    wm = int(clock() * 1000) - 42_000
    live.update_health(HealthFacts(broker_connected=False, consumer_lag=1234, events_per_s=56.5,
                                   watermark_ms=wm))

    class Sender:
        def stats(self):
            return SenderStats(queued=4, sent=10, overflow=2, failed_attempts=7, rejected=1,
                               invalid=0, up=False, last_error="refused")

    body, content_type = render(make_registry(live, Sender()))
    assert content_type.startswith("text/plain; version=0.0.4")
    got = samples(body.decode())
    firing = by_name(got, "callstream_alert_firing")
    assert {dict(k)["fingerprint"]: v for k, v in firing.items()} == \
        {"a" * 16: 1.0, "b" * 16: 0.0, "c" * 16: 1.0}
    assert dict(next(k for k in firing if dict(k)["fingerprint"] == "c" * 16))["severity"] == "critical"
    sev = {dict(k)["severity"]: v for k, v in by_name(got, "callstream_alerts_firing").items()}
    assert sev == {"warning": 1.0, "critical": 1.0}
    dead = {dict(k)["reason"]: v for k, v in by_name(got, "callstream_dead_letters_total").items()}
    assert dead == {"malformed_json": 2.0, "oversized": 1.0}
    one = {n: v for (n, labels), v in got.items() if not labels}
    assert one["callstream_broker_connected"] == 0.0
    assert one["callstream_consumer_lag_messages"] == 1234.0
    assert one["callstream_events_per_second"] == 56.5
    assert one["callstream_watermark_timestamp_seconds"] == wm / 1000.0
    assert one["callstream_watermark_delay_seconds"] == 42.0
    assert one["callstream_alertmanager_queued"] == 4.0
    assert one["callstream_alertmanager_overflow_total"] == 2.0
    assert one["callstream_alertmanager_sent_total"] == 10.0
    assert one["callstream_data_stale"] == 0.0            # the watermark just moved
    assert "process_resident_memory_bytes" in one
    clock.t += 301                                        # ... and then nothing for 5 minutes
    live.update_health(HealthFacts(broker_connected=False, watermark_ms=wm))
    got = samples(render(make_registry(live))[0].decode())
    assert got[("callstream_data_stale", frozenset())] == 1.0
    assert got[("callstream_watermark_delay_seconds", frozenset())] == 343.0
