"""Alertmanager webhook sender against a real HTTP receiver on loopback (http.server) that is
down for a while, fails, refuses, then accepts."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest

from streams.alertmanager import AlertmanagerSender, alerts_endpoint, to_alertmanager
from streams.broker import free_port
from streams.errors import CallstreamError
from streams.feed import parse_alert
from tests.test_feed import alert_rec


class Receiver:
    """A stand-in Alertmanager: records every POST to /api/v2/alerts; can fail on purpose."""

    def __init__(self, port: int, fail_first: int = 0, status: int = 503) -> None:
        self.posts: list[list[dict]] = []
        self.paths: list[str] = []
        self.fail_left = fail_first
        self.fail_status = status
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.paths.append(self.path)
                if receiver.fail_left:
                    receiver.fail_left -= 1
                    self.send_response(receiver.fail_status)
                    self.end_headers()
                    return
                assert self.headers["Content-Type"] == "application/json"
                alerts = orjson.loads(body)
                if any("poison" in a["labels"] for a in alerts):     # an invalid alert
                    self.send_response(400)
                    self.end_headers()
                    return
                receiver.posts.append(alerts)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def alerts(self) -> list[dict]:
        return [a for post in self.posts for a in post]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_for(cond, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def fast_sender(port: int, **kw) -> AlertmanagerSender:
    options = dict(backoff_initial_s=0.05, backoff_max_s=0.4, resend_interval_s=0, timeout_s=2.0)
    options.update(kw)
    return AlertmanagerSender(f"http://127.0.0.1:{port}", **options)


def records(n: int) -> list[dict]:
    """Alternating firing/resolved changes of a few alerts, in event-time order."""
    out = []
    for i in range(n):
        fp = f"{i % 3:016x}"
        out.append(alert_rec(fp, status="firing" if (i // 3) % 2 == 0 else "resolved",
                             at_min=i, trust=f"T{i % 3}"))
    return out


def test_payload_is_alertmanager_v2():
    firing = to_alertmanager(parse_alert(alert_rec()), "http://wall:6066/")
    assert firing == {
        "labels": {"alertname": "c2_mean", "trust": "LAS", "category": "C2", "severity": "warning",
                   "window": "1h"},
        "annotations": {"summary": "C2 mean response 34 min 12 s over the last hour in LAS",
                        "value": "2052", "threshold": "1080", "unit": "seconds"},
        "startsAt": "2026-01-14T00:00:00Z", "generatorURL": "http://wall:6066/"}
    resolved = to_alertmanager(parse_alert(alert_rec(status="resolved", at_min=95)))
    assert resolved["endsAt"] == "2026-01-14T01:35:00Z" and "generatorURL" not in resolved
    assert all(isinstance(v, str) for v in {**firing["labels"], **firing["annotations"]}.values())


def test_endpoint_and_bad_urls():
    assert alerts_endpoint("http://am:9093") == "http://am:9093/api/v2/alerts"
    assert alerts_endpoint("http://am:9093/") == "http://am:9093/api/v2/alerts"
    assert alerts_endpoint("https://am/prefix/api/v2/alerts") == "https://am/prefix/api/v2/alerts"
    for bad in ("am:9093", "ftp://am", "http://", ""):
        with pytest.raises(CallstreamError, match="--alertmanager-url"):
            alerts_endpoint(bad)


def test_down_then_up_every_alert_arrives_once_in_order():
    port = free_port()
    sender = fast_sender(port, batch_max=4).start()
    recs = records(20)
    try:
        for rec in recs[:12]:
            assert sender.submit(rec)
        assert sender.stats().queued == 12             # submit never waits for the network
        assert wait_for(lambda: sender.stats().failed_attempts >= 3)
        assert sender.stats().up is False and sender.stats().sent == 0
        receiver = Receiver(port)                       # Alertmanager comes back
        try:
            for rec in recs[12:]:
                sender.submit(rec)
            assert wait_for(lambda: len(receiver.alerts) >= 20)
            time.sleep(0.3)                             # and nothing more arrives
            expected = [to_alertmanager(parse_alert(r)) for r in recs]
            assert receiver.alerts == expected
            assert set(receiver.paths) == {"/api/v2/alerts"}
            assert max(len(p) for p in receiver.posts) <= 4
            s = sender.stats()
            assert (s.sent, s.queued, s.overflow, s.up) == (20, 0, 0, True)
        finally:
            receiver.stop()
    finally:
        sender.close(drain_s=1)


def test_server_errors_are_retried_an_invalid_alert_is_dropped_alone():
    port = free_port()
    receiver = Receiver(port, fail_first=3, status=503)
    sender = fast_sender(port, batch_max=10)
    try:
        sender.start().submit(alert_rec("1" * 16))
        assert wait_for(lambda: len(receiver.alerts) == 1)
        assert sender.stats().failed_attempts == 3 and sender.stats().sent == 1
        sender.close(drain_s=0)
        sender = fast_sender(port, batch_max=10)       # queue three, post them as one batch
        for fp, extra in (("2", {}), ("3", {"poison": "yes"}), ("4", {})):
            sender.submit(alert_rec(fp * 16, **extra))
        sender.start()
        assert wait_for(lambda: sender.stats().queued == 0)
        time.sleep(0.2)
        assert [a["labels"]["trust"] for a in receiver.alerts] == ["LAS"] * 3
        assert [a["startsAt"] for a in receiver.alerts] == ["2026-01-14T00:00:00Z"] * 3
        assert ["poison" in a["labels"] for a in receiver.alerts] == [False] * 3
        s = sender.stats()
        assert (s.sent, s.rejected, s.failed_attempts) == (2, 1, 0)
        assert [len(p) for p in receiver.posts] == [1, 1, 1]   # 1, then 2 and 4 isolated
    finally:
        sender.close(drain_s=1)
        receiver.stop()


def test_full_queue_drops_oldest_and_counts_it():
    port = free_port()
    sender = fast_sender(port, queue_size=5).start()
    recs = records(8)
    try:
        for rec in recs:
            sender.submit(rec)
        s = sender.stats()
        assert s.overflow == 3 and s.queued == 5
        assert not sender.submit({"fingerprint": "nope"}) and sender.stats().invalid == 1
        receiver = Receiver(port)
        try:
            assert wait_for(lambda: len(receiver.alerts) >= 5)
            time.sleep(0.2)
            assert receiver.alerts == [to_alertmanager(parse_alert(r)) for r in recs[3:]]
        finally:
            receiver.stop()
    finally:
        sender.close(drain_s=1)


def test_firing_alerts_are_resent_until_resolved():
    """Alertmanager forgets a firing alert after resolve_timeout unless it is sent again."""
    port = free_port()
    receiver = Receiver(port)
    sender = fast_sender(port, resend_interval_s=0.2).start()
    try:
        sender.submit(alert_rec("a" * 16))
        assert wait_for(lambda: len(receiver.alerts) >= 3, timeout=10)
        assert all("endsAt" not in a for a in receiver.alerts)
        assert sender.stats().sent == 1                 # re-sends are not new notifications
        sender.submit(alert_rec("a" * 16, status="resolved", at_min=30))
        assert wait_for(lambda: "endsAt" in receiver.alerts[-1], timeout=10)
        n = len(receiver.alerts)
        time.sleep(0.6)
        assert len(receiver.alerts) == n                # nothing firing: no more re-sends
    finally:
        sender.close(drain_s=1)
        receiver.stop()


def test_close_drains_what_it_can():
    port = free_port()
    receiver = Receiver(port)
    sender = fast_sender(port)                          # not started: everything is queued
    for rec in records(6):
        sender.submit(rec)
    sender.start().close(drain_s=5)
    assert len(receiver.alerts) == 6 and sender.stats().queued == 0
    receiver.stop()
