"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright.

* against a running worker fed a generated log through the real broker: the tiles show the
  values the API returns, a newly fired alert appears within 2 s of the worker publishing it
  (without a reload), the token is enforced, and a screenshot is saved in test-artifacts/;
* against a bare feed server: the banner plainly says waiting / live / broker lost / stale /
  worker lost.

Chromium comes from apt (`.ci/run` installs it) and Playwright from PyPI; Playwright's own
browser download is never used. Without either, the tests fail under CI=true, else skip."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from producers.publish import publish_logs
from producers.simulate import TrustProfile, generate
from streams.broker import free_port
from streams.alertmanager import to_alertmanager
from streams.feed import HealthFacts, LiveView, parse_alert
from streams.timefmt import parse_ts
from streams.topics import TopicNames
from tests.conftest import in_ci
from tests.test_alertmanager import Receiver
from tests.test_feed import T0, alert_rec, stats_rec, totals_rec

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TOKEN = "dashboard-test-token-0123456789"
CATS = ("C1", "C2", "C3", "C4")
SECRET = b'{"type": "call_received", "call_id": "SECRET-RAW-MARKER", "ts": '

#: Records the first time (page clock, ms) each alert appears in the active list.
SEEN_SCRIPT = """
window.__seen = {};
document.addEventListener("DOMContentLoaded", () => {
  new MutationObserver((records) => {
    const now = Date.now();
    for (const r of records) for (const n of r.addedNodes)
      if (n.dataset && n.dataset.fingerprint && !(n.dataset.fingerprint in window.__seen))
        window.__seen[n.dataset.fingerprint] = now;
  }).observe(document.getElementById("alerts"), {childList: true});
});
"""

#: Every tile and trust heading as the page shows it.
READ_TILES = """() => {
  const out = {tiles: [], heads: []};
  for (const t of document.querySelectorAll(".tile")) {
    const f = {};
    for (const e of t.querySelectorAll("[data-field]")) f[e.dataset.field] = [e.dataset.value, e.textContent];
    out.tiles.push({trust: t.dataset.trust, category: t.dataset.category, status: t.dataset.status || null, fields: f});
  }
  for (const h of document.querySelectorAll(".trust-head")) {
    const f = {};
    for (const e of h.querySelectorAll("[data-field]")) f[e.dataset.field] = [e.dataset.value, e.textContent];
    out.heads.push({trust: h.dataset.trust, fields: f});
  }
  out.window = document.getElementById("window").value;
  return out;
}"""


def unavailable(reason: str):
    if in_ci():
        pytest.fail(f"browser test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install -c constraints.txt -e '.[test]')")
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"no {CHROMIUM} (apt-get install -y chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1920, "height": 1080})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.add_init_script(SEEN_SCRIPT)
    page.goto(url)
    return page, errors


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


# -- what a tile must show: written here independently of the page's script -----------------
def duration_text(s: float | None) -> str:
    """Nearest second (halves up); "12m 05s" under an hour, "2h 03m" from an hour."""
    if s is None:
        return "–"
    t = math.floor(s + 0.5)
    return f"{t // 60}m {t % 60:02d}s" if t < 3600 else f"{t // 3600}h {(t % 3600) // 60:02d}m"


def as_number(v: str) -> float | None:
    return None if v == "" else float(v)


def check_page_matches_api(shown: dict, api: dict) -> list[str]:
    """Differences between the tiles/headings on the page and the API (empty: they agree)."""
    window = shown["window"]
    problems = []
    want = {(s["trust"], s["category"]): s for s in api["stats"]
            if s["window"] == window and s["category"] in CATS}
    tiles = {(t["trust"], t["category"]): t for t in shown["tiles"]}
    for key, s in want.items():
        t = tiles.get(key)
        if t is None:
            problems.append(f"no tile for {key}")
            continue
        if t["status"] != s["status"]:
            problems.append(f"{key} status {t['status']} != {s['status']}")
        for field in ("mean_s", "p90_s", "longest_wait_s"):
            value, text = t["fields"][field]
            if as_number(value) != s[field] or text != duration_text(s[field]):
                problems.append(f"{key} {field} shows {value!r}/{text!r}, API {s[field]}")
        for field in ("count", "waiting"):
            value, text = t["fields"][field]
            if as_number(value) != s[field] or text != str(s[field]):
                problems.append(f"{key} {field} shows {text!r}, API {s[field]}")
    empty = [k for k, t in tiles.items() if k not in want and t["fields"]]
    if empty:
        problems.append(f"tiles with values the API does not have: {empty}")
    totals = {t["trust"]: t for t in api["totals"] if t["window"] == window}
    for head in shown["heads"]:
        tot = totals.get(head["trust"])
        if tot is None:
            continue
        if head["fields"]["calls"][1] != str(tot["calls"]):
            problems.append(f"{head['trust']} calls {head['fields']['calls']} != {tot['calls']}")
        for field in ("hear_and_treat_share", "redirected_share"):
            value, text = head["fields"][field]
            if tot[field] is None:
                ok = text == "–"
            else:
                ok = as_number(value) == tot[field] and \
                    abs(float(text.rstrip("%")) - 100 * tot[field]) <= 0.05 + 1e-9
            if not ok:
                problems.append(f"{head['trust']} {field} shows {text!r}, API {tot[field]}")
    return problems


def wait_until(cond, timeout: float, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(every)


# -- against a running worker and the real broker --------------------------------------------
def get(port: int, path: str, token: str | None = TOKEN) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read() if not path.startswith("/api/stream") else r.read(1)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def api(port: int, path: str) -> dict | None:
    status, body = get(port, path)
    return orjson.loads(body) if status == 200 else None


def settled(port: int) -> dict | None:
    """The API's stats once the worker has caught up and nothing changed for a second."""
    h = api(port, "/api/health")
    if not h or h["consumer_lag"] != 0 or not h["has_data"]:
        return None
    first = api(port, "/api/stats")
    time.sleep(1.0)
    again = api(port, "/api/stats")
    h = api(port, "/api/health")
    return again if again == first and h and h["consumer_lag"] == 0 else None


def split_log(lines: list[bytes], cut_ms: int) -> tuple[list[bytes], list[bytes]]:
    before, after = [], []
    for line in lines:
        (before if parse_ts(orjson.loads(line)["ts"]) < cut_ms else after).append(line)
    return before, after


def alert_records(bootstrap: str, topic: str, seconds: float) -> list[tuple[dict, int]]:
    """(record, Kafka timestamp ms) of everything on the alerts topic, read for `seconds`."""
    from kafka import KafkaConsumer
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=500)
    out = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            out.extend((orjson.loads(m.value), m.timestamp) for m in consumer)
    finally:
        consumer.close()
    return out


@pytest.fixture
def worker_with_token(kafka_bootstrap, topic_prefix, tmp_path):
    procs = []

    def start(alertmanager_url: str) -> int:
        port = free_port()
        env = dict(os.environ, PYTHONUNBUFFERED="1", CALLSTREAM_WEB_TOKEN=TOKEN,
                   CALLSTREAM_ALERTMANAGER_URL=alertmanager_url)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker", "--bootstrap", kafka_bootstrap,
             "--topic-prefix", topic_prefix, "--web-port", str(port), "--loglevel", "warning",
             "--data-dir", str(tmp_path / "worker")],
            stdout=open(tmp_path / "worker.log", "wb"), stderr=subprocess.STDOUT, env=env))
        return port

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def test_dashboard_against_a_live_worker(browser, kafka_bootstrap, topic_prefix,
                                         worker_with_token, tmp_path):
    lines = list(generate([TrustProfile("LAS", 5000.0), TrustProfile("EEAST", 3000.0)], T0, 0.4,
                          seed=8))
    first, rest = split_log(lines, T0 + 50 * 60_000)
    rest, _ = split_log(rest, T0 + 6 * 3_600_000)      # stop mid-stream: busy last windows
    rest.insert(len(rest) // 2, SECRET)                 # a record that will be dead-lettered
    for name, part in (("first.jsonl", first), ("rest.jsonl", rest)):
        (tmp_path / name).write_bytes(b"\n".join(part) + b"\n")
    assert publish_logs([str(tmp_path / "first.jsonl")], kafka_bootstrap, topic_prefix).failed == 0
    alertmanager = Receiver(free_port())
    try:
        run_live_worker(browser, kafka_bootstrap, topic_prefix, tmp_path,
                        worker_with_token(f"http://127.0.0.1:{alertmanager.server.server_port}"),
                        alertmanager)
    finally:
        alertmanager.stop()


def run_live_worker(browser, kafka_bootstrap, topic_prefix, tmp_path, port, alertmanager):
    log = tmp_path / "worker.log"

    stats = wait_until(lambda: settled(port), timeout=120, every=0.5)
    assert stats, (f"worker never caught up: health {api(port, '/api/health')}, "
                   f"log {log.read_text(errors='replace')[-3000:]}")
    assert any(s["window"] == "1h" for s in stats["stats"])

    # the token is enforced on the page, the API, the streams, /metrics and Faust's routes
    for path in ("/", "/api/stats", "/api/alerts", "/api/health", "/api/stream", "/metrics",
                 "/health"):
        assert get(port, path, token=None)[0] == 401, path
        assert get(port, path, token="wrong-token-0123456789")[0] == 401, path
        assert get(port, path)[0] == 200, path
    assert b"callstream_window_responses{" in get(port, "/metrics")[1]

    page, errors = open_page(browser, f"http://127.0.0.1:{port}/?token={TOKEN}")
    page.wait_for_selector(".tile .val[data-value]")
    page.evaluate("window.__marker = 'no reload'")
    assert page.locator("#status").get_attribute("data-state") == "live"
    problems = check_page_matches_api(page.evaluate(READ_TILES), stats)
    assert not problems, problems
    before = {a["fingerprint"] for a in api(port, "/api/alerts")["active"]}

    # more input: windows close, tiles change, the rules fire alerts the page has not seen
    assert publish_logs([str(tmp_path / "rest.jsonl")], kafka_bootstrap, topic_prefix).failed == 0
    topic = TopicNames.with_prefix(topic_prefix).alerts
    new = []
    deadline = time.monotonic() + 120
    while not new and time.monotonic() < deadline:
        new = [(rec, ts) for rec, ts in alert_records(kafka_bootstrap, topic, 2.0)
               if rec["status"] == "firing" and rec["repeat"] == 0
               and rec["fingerprint"] not in before]
    assert new, "no new alert fired (do the rules run in the worker?)"
    seen = wait_until(lambda: (s := page.evaluate("window.__seen")) and
                      all(rec["fingerprint"] in s for rec, _ in new) and s, timeout=10)
    assert seen, "new alerts never appeared on the page"
    delays = {rec["fingerprint"]: seen[rec["fingerprint"]] - ts for rec, ts in new}
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "alert-latency-ms.json").write_bytes(orjson.dumps(
        {"alerts": len(delays), "max_ms": max(delays.values()),
         "median_ms": sorted(delays.values())[len(delays) // 2]}))
    assert max(delays.values()) <= 2000, delays
    assert page.evaluate("window.__marker") == "no reload"

    stats = wait_until(lambda: settled(port), timeout=120, every=0.5)
    assert stats
    # the dead letter is counted by reason; its bytes appear nowhere
    health = api(port, "/api/health")
    assert health["dead_letters"] == 1 and health["dead_letter_reasons"] == {"malformed_json": 1}
    for path in ("/api/snapshot", "/api/stats", "/api/alerts", "/api/health", "/metrics", "/"):
        assert b"SECRET-RAW-MARKER" not in get(port, path)[1], path
    assert "SECRET-RAW-MARKER" not in page.content()
    agree = wait_until(lambda: not check_page_matches_api(page.evaluate(READ_TILES), stats),
                       timeout=10)
    assert agree, check_page_matches_api(page.evaluate(READ_TILES), stats)
    active = api(port, "/api/alerts")["active"]
    shown = page.locator("#alerts .alert").evaluate_all("els => els.map(e => e.dataset.fingerprint)")
    assert shown == [a["fingerprint"] for a in active]
    assert page.locator("#alerts .alert .summary").first.text_content() == active[0]["summary"]
    assert page.locator("#trends svg path[data-series=p90_s]").count() >= 2
    path = screenshot(page, "dashboard-live-worker.png")
    assert path.stat().st_size > 20_000
    assert not errors, errors
    page.close()

    # every alert state change the worker published went to Alertmanager once, in order
    published = [rec for rec, _ in alert_records(kafka_bootstrap, topic, 2.0)]
    assert wait_until(lambda: len(alertmanager.alerts) >= len(published), timeout=20)
    sent = alertmanager.alerts[:len(published)]       # (re-sends of firing alerts come later)
    def history(payloads):
        out: dict = {}
        for p in payloads:
            out.setdefault(tuple(sorted(p["labels"].items())), []).append(
                (p["startsAt"], p.get("endsAt"), p["annotations"]["summary"]))
        return out
    assert history(sent) == history(to_alertmanager(parse_alert(r)) for r in published)
    assert api(port, "/api/health")["alertmanager"]["sent"] == len(published)


# -- banner states against a bare feed server ------------------------------------------------
class FeedServer:
    """A LiveView served by aiohttp on a background event loop (changes run on that loop)."""

    def __init__(self, live: LiveView) -> None:
        from aiohttp import web

        from streams.web.server import create_app
        self.live = live
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(create_app(live))
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.call(self._start)

    async def _start(self):
        from aiohttp import web
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def call(self, fn, *args):
        async def run():
            r = fn(*args)
            return await r if asyncio.iscoroutine(r) else r
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def stop(self) -> None:
        self.call(self.runner.cleanup)
        self.loop.call_soon_threadsafe(self.loop.stop)


def banner(page) -> tuple[str, str]:
    el = page.locator("#status")
    return el.get_attribute("data-state"), el.text_content()


def test_banner_says_plainly_what_is_wrong(browser):
    live = LiveView(stale_after_s=3600)
    server = FeedServer(live)
    try:
        page, errors = open_page(browser, f"http://127.0.0.1:{server.port}/")
        assert wait_until(lambda: banner(page)[0] == "waiting", 5), banner(page)

        def feed():
            for end in (60, 75):
                live.on_stats(stats_rec(end, mean_s=1200.0 + end, waiting=4))
                live.on_stats(stats_rec(end, trust="*", mean_s=1100.0 + end))
                live.on_stats(totals_rec(end))
            live.on_alert(alert_rec("f" * 16, at_min=70, severity="critical"))
            live.update_health(HealthFacts(broker_connected=True, consumer_lag=0,
                                           events_per_s=3.0))
        server.call(feed)
        assert wait_until(lambda: banner(page)[0] == "live", 5), banner(page)
        assert not check_page_matches_api(page.evaluate(READ_TILES), server.call(_stats, live))
        assert page.locator("#alerts .alert").get_attribute("data-severity") == "critical"
        assert page.locator("#alert-count").text_content() == "1"

        server.call(live.update_health, HealthFacts(broker_connected=False))
        assert wait_until(lambda: banner(page)[0] == "broker", 2), banner(page)
        assert "LOST THE KAFKA BROKER" in banner(page)[1]
        screenshot(page, "dashboard-broker-lost.png")

        def go_stale():
            live.stale_after_s = 1.0
            live.update_health(HealthFacts(broker_connected=True))
        server.call(go_stale)
        assert wait_until(lambda: banner(page)[0] == "stale", 4), banner(page)
        assert banner(page)[1].startswith("STALE: no new data for")

        server.call(live.on_alert, alert_rec("f" * 16, status="resolved", at_min=80,
                                             severity="critical"))
        assert wait_until(lambda: page.locator("#alerts .alert").count() == 0, 2)
        assert page.locator("#recent .alert").first.get_attribute("data-status") == "resolved"

        server.stop()
        assert wait_until(lambda: banner(page)[0] == "disconnected", 10), banner(page)
        assert "LOST CONTACT WITH THE WORKER" in banner(page)[1]
        screenshot(page, "dashboard-worker-lost.png")
        assert not [e for e in errors if "ERR_CONNECTION_REFUSED" not in e], errors
        page.close()
    finally:
        if server.loop.is_running():
            server.stop()


def _stats(live: LiveView) -> dict:
    return {"stats": live.stats_list(), "totals": live.totals_list()}
