"""LiveView: the state behind the dashboard, API and /metrics (no Kafka, no HTTP)."""

from __future__ import annotations

import asyncio
import random

import orjson
import pandas as pd
import pytest

from producers.simulate import TrustProfile, generate
from streams.feed import (ALERT, STATS, TOTALS, HealthFacts, LiveView, parse_alert, rate)
from streams.replay import process_lines
from streams.settings import ProcessingSettings
from streams.timefmt import format_ts, parse_ts

T0 = parse_ts("2026-01-14T00:00:00Z")
MIN = 60_000


def stats_rec(end_min: int, trust="LAS", category="C2", window="1h", **kw) -> dict:
    end = T0 + end_min * MIN
    rec = {"window": window, "start": format_ts(end - 60 * MIN), "end": format_ts(end),
           "trust": trust, "category": category, "count": 10, "mean_s": 1000.0,
           "p50_s": 900.0, "p90_s": 2000.0, "p99_s": 2500.0, "max_s": 2600.0, "sum_s": 10000.0,
           "late": 0, "waiting": 3, "longest_wait_s": 400.0}
    rec.update(kw)
    return rec


def totals_rec(end_min: int, trust="LAS", window="1h", calls=200, hat=40, red=5) -> dict:
    end = T0 + end_min * MIN
    return {"window": window, "start": format_ts(end - 60 * MIN), "end": format_ts(end),
            "trust": trust, "category": "ALL", "calls": calls, "hear_and_treat": hat,
            "redirected": red, "redirected_c1": 1, "responses": 150}


def alert_rec(fp="a" * 16, status="firing", at_min=0, repeat=0, **labels) -> dict:
    at = format_ts(T0 + at_min * MIN)
    return {"fingerprint": fp, "rule": "c2_mean", "status": status, "at": at,
            "starts_at": format_ts(T0), "ends_at": at if status == "resolved" else None,
            "labels": {"alertname": "c2_mean", "trust": "LAS", "category": "C2",
                       "severity": "warning", "window": "1h", **labels},
            "value": 2052.0, "threshold": 1080.0, "unit": "seconds",
            "summary": "C2 mean response 34 min 12 s over the last hour in LAS", "repeat": repeat}


class FakeClock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# -- targets ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value,target,expected", [
    (0.0, 1080.0, "within"), (971.9, 1080.0, "within"), (972.0, 1080.0, "close"),
    (1080.0, 1080.0, "close"), (1080.01, 1080.0, "breached"), (None, 1080.0, None),
    (500.0, None, None)])
def test_rate_against_target(value, target, expected):
    assert rate(value, target) == expected


def test_tile_status_is_the_worse_of_mean_and_90th():
    live = LiveView()
    live.on_stats(stats_rec(60, category="C1", mean_s=300.0, p90_s=899.0))     # 90th close
    live.on_stats(stats_rec(60, category="C2", mean_s=1100.0, p90_s=100.0))    # mean breached
    live.on_stats(stats_rec(60, category="C3", mean_s=99999.0, p90_s=100.0))   # C3: no mean target
    live.on_stats(stats_rec(60, category="C1T", mean_s=99999.0, p90_s=99999.0))  # no standard
    got = {s["category"]: (s["mean_status"], s["p90_status"], s["status"]) for s in live.stats_list()}
    assert got == {"C1": ("within", "close", "close"), "C2": ("breached", "within", "breached"),
                   "C3": (None, "within", "within"), "C1T": (None, None, None)}


# -- window stats ------------------------------------------------------------------------------
def test_latest_window_wins_and_older_ones_do_not_replace_it():
    live = LiveView()
    live.on_stats(stats_rec(120, mean_s=1200.0))
    live.on_stats(stats_rec(105, mean_s=999.0))          # older window, arriving late
    [s] = live.stats_list()
    assert s["end"] == format_ts(T0 + 120 * MIN) and s["mean_s"] == 1200.0


def test_only_contract_fields_leave_the_view():
    live = LiveView()
    sub = live.subscribe()
    live.on_stats(stats_rec(60, raw='{"call_id": "secret-payload"}', extra="x"))
    live.on_alert({**alert_rec(), "raw": "secret-payload", "labels": {
        "alertname": "c2_mean", "severity": "warning", "nested": {"raw": "secret-payload"}}})
    out = orjson.dumps([live.stats_list(), live.alerts(), live.health()]) + b"".join(sub.frames)
    assert b"secret-payload" not in out and b"extra" not in out
    assert live.alerts()["active"][0]["labels"] == {"alertname": "c2_mean", "severity": "warning"}


def test_malformed_records_are_counted_not_raised():
    live = LiveView()
    for bad in [None, [], {"window": "1h"}, stats_rec(60, end="yesterday"),
                stats_rec(60, category="C9"), {"fingerprint": "x", "status": "maybe"}]:
        live.on_stats(bad)
    live.on_alert({"fingerprint": "x", "rule": "r", "status": "maybe", "starts_at": "2026-01-14T00:00:00Z"})
    assert live.ignored == 7 and live.stats_list() == [] and live.alerts()["active"] == []


def test_call_totals_and_shares():
    live = LiveView()
    live.on_stats(totals_rec(60, calls=250, hat=45, red=4))
    live.on_stats(totals_rec(60, trust="*", calls=0, hat=0, red=0))
    by = {t["trust"]: t for t in live.totals_list()}
    assert by["LAS"]["hear_and_treat_share"] == 45 / 250
    assert by["LAS"]["redirected_share"] == 4 / 250
    assert by["*"]["hear_and_treat_share"] is None       # no calls: no share, not 0
    assert [t["trust"] for t in live.totals_list()] == ["*", "LAS"]


def test_pressure_comes_from_the_latest_window_of_each_trust_and_category():
    live = LiveView()
    live.on_stats(stats_rec(60, window="1h", waiting=5, longest_wait_s=100.0))
    live.on_stats(stats_rec(75, window="15m", waiting=9, longest_wait_s=700.0))
    live.on_stats(stats_rec(60, window="24h", waiting=2, longest_wait_s=50.0))
    live.on_stats(stats_rec(75, category="C1T", waiting=None, longest_wait_s=None))
    assert live.pressure() == [{"trust": "LAS", "category": "C2", "at": format_ts(T0 + 75 * MIN),
                                "waiting": 9, "longest_wait_s": 700.0}]


def test_trend_keeps_24_hours_of_the_trend_window_whatever_the_arrival_order():
    ends = list(range(60, 60 + 30 * 60, 15))            # 30 hours of 1h windows every 15 min
    recs = [stats_rec(e, mean_s=float(e), p90_s=2.0 * e) for e in ends]
    recs += [stats_rec(e, window="15m", mean_s=1.0) for e in ends]   # not the trend window
    expected_ends = [e for e in ends if T0 + e * MIN > T0 + ends[-1] * MIN - 24 * 3_600_000]
    for order in (recs, random.Random(3).sample(recs, len(recs))):
        live = LiveView(trend_window="1h")
        for r in order:
            live.on_stats(r)
        points = [p for p in live.trends_list() if p["trust"] == "LAS"][0]["points"]
        assert [parse_ts(p["end"]) for p in points] == [T0 + e * MIN for e in expected_ends]
        assert [p["mean_s"] for p in points] == [float(e) for e in expected_ends]
        assert len(points) == 96


def test_view_agrees_with_pandas_over_a_replay():
    """Every (trust, category, window) shows the fields of its latest record."""
    lines = list(generate([TrustProfile("LAS", 3000.0), TrustProfile("EEAST", 1500.0)],
                          T0, 0.5, seed=11))
    _, out = process_lines(lines, ProcessingSettings())
    live = LiveView()
    for rec in out.stats_records:
        live.on_stats(rec)
    df = pd.DataFrame([r for r in out.stats_records if r["category"] != "ALL"])
    df["end_ms"] = df["end"].map(parse_ts)
    latest = df.sort_values("end_ms").groupby(["trust", "category", "window"]).tail(1)
    got = pd.DataFrame(live.stats_list())
    assert len(got) == len(latest)
    merged = latest.merge(got, on=["trust", "category", "window"], suffixes=("", "_live"))
    for col in ("end", "count", "mean_s", "p90_s", "waiting", "longest_wait_s"):
        assert merged[col].equals(merged[col + "_live"]), col
    tot = pd.DataFrame([r for r in out.stats_records if r["category"] == "ALL"])
    tot["end_ms"] = tot["end"].map(parse_ts)
    last = tot.sort_values("end_ms").groupby(["trust", "window"]).tail(1).set_index(["trust", "window"])
    for t in live.totals_list():
        row = last.loc[(t["trust"], t["window"])]
        assert t["calls"] == row["calls"]
        if row["calls"]:
            assert t["hear_and_treat_share"] == pytest.approx(row["hear_and_treat"] / row["calls"])
            assert t["redirected_share"] == pytest.approx(row["redirected"] / row["calls"])
        else:
            assert t["hear_and_treat_share"] is None


# -- alerts ------------------------------------------------------------------------------------
def test_alert_lifecycle_active_and_recent():
    live = LiveView()
    live.on_alert(alert_rec("a" * 16, at_min=0))
    live.on_alert(alert_rec("b" * 16, at_min=5, severity="critical"))
    live.on_alert(alert_rec("a" * 16, at_min=60, repeat=1))            # re-notification
    assert [a["fingerprint"] for a in live.alerts()["active"]] == ["b" * 16, "a" * 16]  # critical first
    assert [(a["fingerprint"], a["status"]) for a in live.alerts()["recent"]] == \
        [("b" * 16, "firing"), ("a" * 16, "firing")]
    live.on_alert(alert_rec("a" * 16, status="resolved", at_min=90))
    live.on_alert(alert_rec("a" * 16, at_min=30, repeat=1))            # stale repeat: ignored
    assert [a["fingerprint"] for a in live.alerts()["active"]] == ["b" * 16]
    assert live.alerts()["recent"][0]["status"] == "resolved"
    assert parse_alert(alert_rec()).severity == "warning"


def test_recent_alerts_are_newest_first_by_event_time_and_bounded():
    live = LiveView(recent_alerts=5)
    minutes = random.Random(7).sample(range(100), 40)    # arrival order across partitions
    for m in minutes:
        live.on_alert(alert_rec(f"{m:016x}", at_min=m))
    assert [parse_ts(a["at"]) for a in live.alerts()["recent"]] == \
        [T0 + m * MIN for m in sorted(minutes, reverse=True)[:5]]


def test_dead_letters_are_counted_by_reason_only():
    live = LiveView()
    for reason in ["malformed_json", "malformed_json", "missing_field", None, "x" * 500]:
        live.on_dead_letter(reason)
    h = live.health()
    assert h["dead_letters"] == 5
    assert h["dead_letter_reasons"] == {"malformed_json": 2, "missing_field": 1, "unknown": 2}


# -- health and staleness ----------------------------------------------------------------------
def test_staleness_and_watermark_delay_follow_the_wall_clock():
    clock = FakeClock()
    live = LiveView(stale_after_s=300, clock=clock)
    h = live.health()
    assert h["stale"] and not h["has_data"]
    live.on_stats(stats_rec(60))
    assert not live.health()["stale"] and live.health()["data_age_s"] == 0
    clock.t += 299
    assert not live.health()["stale"]
    wm = int((clock.t - 90) * 1000)
    live.update_health(HealthFacts(broker_connected=True, consumer_lag=7, events_per_s=12.5,
                                   watermark_ms=wm))
    h = live.health()                                    # the watermark moved: fresh again
    assert h["data_age_s"] == 0 and h["watermark_delay_s"] == 90.0 and h["consumer_lag"] == 7
    clock.t += 301
    live.update_health(HealthFacts(broker_connected=False, watermark_ms=wm))   # stuck
    h = live.health()
    assert h["stale"] and h["broker_connected"] is False and h["data_age_s"] == 301


# -- fan-out -----------------------------------------------------------------------------------
def test_slow_subscriber_drops_oldest_counts_it_and_never_blocks_others():
    live = LiveView()
    slow = live.subscribe(maxsize=3)
    fast = live.subscribe(maxsize=1000)
    alerts_only = live.subscribe([ALERT])
    for i in range(10):
        live.on_stats(stats_rec(60 + 15 * i, mean_s=float(i)))

    async def drain(sub):
        return await sub.next(timeout=0.01)

    frames, lost = asyncio.run(drain(slow))
    assert lost and slow.dropped == 7 and live.dropped == 7 and live.health()["sse_dropped"] == 7
    assert [orjson.loads(f.split(b"data: ", 1)[1])["mean_s"] for f in frames] == [7.0, 8.0, 9.0]
    frames, lost = asyncio.run(drain(fast))
    assert not lost and len(frames) == 10
    frames, lost = asyncio.run(drain(alerts_only))
    assert frames == [] and not lost
    live.on_alert(alert_rec())
    frames, _ = asyncio.run(drain(alerts_only))
    assert len(frames) == 1 and frames[0].startswith(b"event: alert\n")


def test_snapshot_frame_and_close():
    live = LiveView()
    live.on_stats(stats_rec(60))
    live.on_stats(totals_rec(60))
    live.on_alert(alert_rec())
    frame = live.snapshot_frame(frozenset({STATS, TOTALS}))
    assert frame.startswith(b"event: snapshot\n")
    data = orjson.loads(frame.split(b"data: ", 1)[1])
    assert set(data) >= {"stats", "totals", "trends", "targets"} and "alerts" not in data
    assert data["targets"]["C2"] == {"mean_s": 1080, "p90_s": 2400}
    sub = live.subscribe()
    live.close()
    assert sub.closed and asyncio.run(sub.next(0.01)) is None and live.subscribers == []
