"""The HTTP API, SSE streams, page and security of the control-room feed (aiohttp test server
over loopback; the LiveView is fed the records a replay produced)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from streams.errors import CallstreamError
from streams.feed import HealthFacts, LiveView
from streams.web.server import check_security, create_app, is_loopback
from tests.test_feed import alert_rec, stats_rec, totals_rec

TOKEN = "s3cret-token-0123456789"


def fed_view() -> LiveView:
    live = LiveView()
    for end in (60, 75, 90):
        for trust in ("LAS", "*"):
            live.on_stats(stats_rec(end, trust=trust, mean_s=1000.0 + end, p90_s=2000.0 + end,
                                    waiting=end // 15, raw="RAW-PAYLOAD-1"))
            live.on_stats(stats_rec(end, trust=trust, category="C1", mean_s=400.0, p90_s=950.0))
            live.on_stats(totals_rec(end, trust=trust))
    live.on_stats(stats_rec(90, window="15m", mean_s=5.0))
    live.on_alert(alert_rec("a" * 16, at_min=60))
    live.on_alert(alert_rec("b" * 16, at_min=61))
    live.on_alert(alert_rec("b" * 16, status="resolved", at_min=80))
    live.on_dead_letter("malformed_json")
    live.update_health(HealthFacts(broker_connected=True, consumer_lag=3, events_per_s=4.5,
                                   watermark_ms=1_768_400_000_000))
    return live


def serve(live: LiveView, check, token: str | None = None, heartbeat_s: float = 15.0):
    """Run `check(client)` against an app serving `live`."""
    from streams.web.server import WebSecurity

    async def main():
        app = create_app(live, WebSecurity("127.0.0.1", token), heartbeat_s=heartbeat_s)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            return await check(client)
    return asyncio.run(main())


async def read_events(resp, n: int, timeout: float = 5.0) -> list[tuple[str, dict]]:
    """The next `n` SSE events (name, data) of a streaming response."""
    events, buf = [], b""
    while len(events) < n:
        chunk = await asyncio.wait_for(resp.content.readany(), timeout)
        assert chunk, "stream ended"
        buf += chunk
        while b"\n\n" in buf:
            block, buf = buf.split(b"\n\n", 1)
            fields = dict(line.split(b": ", 1) for line in block.split(b"\n")
                          if b": " in line and not line.startswith(b":"))
            if b"event" in fields:
                events.append((fields[b"event"].decode(), orjson.loads(fields[b"data"])))
    return events


def test_api_returns_what_the_view_holds():
    live = fed_view()

    async def check(c):
        r = await c.get("/api/stats", params={"window": "1h", "trust": "LAS"})
        assert r.status == 200 and r.content_type == "application/json"
        body = await r.json()
        assert body["windows"] == ["15m", "1h"]
        c2 = [s for s in body["stats"] if s["category"] == "C2"]
        assert len(c2) == 1 and c2[0]["mean_s"] == 1090.0 and c2[0]["waiting"] == 6
        assert c2[0]["status"] == "breached" and c2[0]["p90_status"] == "within"
        assert [t["trust"] for t in body["totals"]] == ["LAS"]
        assert body["targets"]["C1"] == {"mean_s": 420, "p90_s": 900}

        r = await c.get("/api/alerts")
        alerts = await r.json()
        assert [a["fingerprint"] for a in alerts["active"]] == ["a" * 16]
        assert [(a["fingerprint"], a["status"]) for a in alerts["recent"]] == \
            [("b" * 16, "resolved"), ("b" * 16, "firing"), ("a" * 16, "firing")]

        r = await c.get("/api/pressure")
        assert {(p["trust"], p["category"], p["waiting"]) for p in (await r.json())["pressure"]} \
            == {("*", "C1", 3), ("*", "C2", 6), ("LAS", "C1", 3), ("LAS", "C2", 6)}

        health = await (await c.get("/api/health")).json()
        assert health["broker_connected"] is True and health["consumer_lag"] == 3
        assert health["events_per_s"] == 4.5 and health["dead_letters"] == 1
        assert health["watermark"] == "2026-01-14T14:13:20Z"

        trends = await (await c.get("/api/trends", params={"trust": "*"})).json()
        assert {t["category"] for t in trends["trends"]} == {"C1", "C2"}
        assert [p["mean_s"] for t in trends["trends"] if t["category"] == "C2"
                for p in t["points"]] == [1060.0, 1075.0, 1090.0]

        snap = await (await c.get("/api/snapshot")).json()
        assert snap["stats"] == live.stats_list() and snap["alerts"] == live.alerts()
        r = await c.get("/api/stats", params={"window": "x" * 200})
        assert r.status == 400
    serve(live, check)


def test_responses_never_carry_raw_payloads_or_cors_headers():
    live = fed_view()

    async def check(c):
        bodies = b""
        for path in ("/", "/api/stats", "/api/alerts", "/api/pressure", "/api/health",
                     "/api/trends", "/api/snapshot", "/metrics"):
            r = await c.get(path, headers={"Origin": "http://evil.example"})
            assert r.status == 200, path
            assert not [h for h in r.headers if h.lower().startswith("access-control-")], path
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert r.headers["Referrer-Policy"] == "no-referrer"
            bodies += await r.read()
        r = await c.options("/api/stats", headers={"Origin": "http://evil.example",
                                                   "Access-Control-Request-Method": "GET"})
        assert "Access-Control-Allow-Origin" not in r.headers
        assert b"RAW-PAYLOAD" not in bodies and b'"raw"' not in bodies
    serve(live, check)


def test_page_is_self_contained_with_a_fresh_nonce():
    async def check(c):
        r1, r2 = await c.get("/"), await c.get("/")
        html = await r1.text()
        csp = r1.headers["Content-Security-Policy"]
        nonce = re.search(r"'nonce-([^']+)'", csp).group(1)
        assert nonce != re.search(r"'nonce-([^']+)'", r2.headers["Content-Security-Policy"]).group(1)
        assert f'<script nonce="{nonce}">' in html and f'<style nonce="{nonce}">' in html
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp
        # nothing fetched from anywhere else: no external URLs, no src/href to other files
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", html)
        assert not re.search(r"<(script|link|img)[^>]+(src|href)=\"(?!data:)", html)
        assert "{{" not in html and "EventSource" in html
    serve(LiveView(), check)


def test_sse_stream_sends_a_snapshot_then_live_updates():
    live = fed_view()

    async def check(c):
        stats = await c.get("/api/stream/stats")
        alerts = await c.get("/api/stream/alerts")
        assert stats.headers["Content-Type"].startswith("text/event-stream")
        [(kind, snap)] = await read_events(stats, 1)
        assert kind == "snapshot" and snap["stats"] == live.stats_list() and "alerts" not in snap
        [(kind, snap)] = await read_events(alerts, 1)
        assert kind == "snapshot" and snap["alerts"] == live.alerts() and "stats" not in snap
        live.on_stats(stats_rec(105, mean_s=1234.5))
        live.on_stats(totals_rec(105, calls=321))
        live.on_alert(alert_rec("c" * 16, at_min=100))
        got = await read_events(stats, 2)
        assert [k for k, _ in got] == ["stats", "totals"]
        assert got[0][1]["mean_s"] == 1234.5 and got[1][1]["calls"] == 321
        [(kind, a)] = await read_events(alerts, 1)
        assert kind == "alert" and a["fingerprint"] == "c" * 16 and a["status"] == "firing"
        assert len(live.subscribers) == 2
        live.close()                            # shutdown ends the streams
        assert await asyncio.wait_for(stats.content.read(), 5) == b""
        stats.close()
        alerts.close()
    serve(live, check)


def test_sse_heartbeat_and_disconnect_unsubscribes():
    live = LiveView()

    async def check(c):
        r = await c.get("/api/stream")
        await read_events(r, 1)
        chunk = await asyncio.wait_for(r.content.readany(), 5)
        assert chunk == b": keep-alive\n\n"
        r.close()
        for _ in range(100):                    # the next heartbeat write notices
            if not live.subscribers:
                break
            await asyncio.sleep(0.05)
        assert live.subscribers == []
    serve(live, check, heartbeat_s=0.2)


def test_sse_client_that_fell_behind_gets_a_fresh_snapshot():
    live = LiveView(queue_size=2)

    async def check(c):
        r = await c.get("/api/stream/stats")
        await read_events(r, 1)
        for i in range(6):                      # no await: the handler cannot run meanwhile
            live.on_stats(stats_rec(60 + 15 * i, mean_s=float(i)))
        [(kind, snap)] = await read_events(r, 1)
        assert kind == "snapshot" and live.dropped == 4
        assert [s["mean_s"] for s in snap["stats"]] == [5.0]
        r.close()
    serve(live, check)


# -- security --------------------------------------------------------------------------------
@pytest.mark.parametrize("host,loop", [("127.0.0.1", True), ("127.0.0.5", True), ("::1", True),
                                       ("localhost", True), ("0.0.0.0", False),
                                       ("192.168.1.20", False), ("::", False),
                                       ("example.org", False)])
def test_loopback_detection(host, loop):
    assert is_loopback(host) is loop


def test_non_loopback_needs_a_good_token():
    with pytest.raises(CallstreamError, match="--web-token or CALLSTREAM_WEB_TOKEN"):
        check_security("0.0.0.0", None)
    with pytest.raises(CallstreamError, match="at least 16"):
        check_security("0.0.0.0", "short")
    with pytest.raises(CallstreamError, match="at least 16"):
        check_security("127.0.0.1", "has a space in it, long enough")
    assert check_security("0.0.0.0", TOKEN).token == TOKEN
    assert check_security("127.0.0.1", None).token is None
    assert check_security("127.0.0.1", "").token is None


def test_token_guards_page_api_streams_and_metrics():
    live = fed_view()
    paths = ["/", "/api/stats", "/api/alerts", "/api/pressure", "/api/health", "/api/trends",
             "/api/snapshot", "/metrics", "/api/stream", "/api/stream/stats", "/api/stream/alerts",
             "/no-such-page"]

    async def check(c):
        for path in paths:
            for headers, params in [({}, {}), ({"Authorization": "Bearer wrong-token-0123456789"}, {}),
                                    ({}, {"token": "wrong"}), ({"Authorization": TOKEN}, {})]:
                r = await c.get(path, headers=headers, params=params)
                assert r.status == 401, (path, headers, params)
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
                assert b"RAW" not in await r.read()
        for path in paths:
            for headers, params in [({"Authorization": f"Bearer {TOKEN}"}, {}), ({}, {"token": TOKEN})]:
                r = await c.get(path, headers=headers, params=params)
                assert r.status == (404 if path == "/no-such-page" else 200), path
                r.close()
    serve(live, check, token=TOKEN)


def test_worker_refuses_a_public_bind_without_a_token():
    """Checked before Kafka is touched: one line, non-zero, no traceback, at once."""
    env = {k: v for k, v in os.environ.items() if k != "CALLSTREAM_WEB_TOKEN"}
    for extra in ([], ["--web-token", "short"]):
        r = subprocess.run([sys.executable, "-m", "streams.cli", "worker", "--web-host", "0.0.0.0",
                            "--bootstrap", "127.0.0.1:1", *extra],
                           capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode != 0
        assert r.stderr.startswith("callstream: error: ") and "token" in r.stderr
        assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
