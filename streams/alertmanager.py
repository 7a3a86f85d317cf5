"""Alert state changes to a Prometheus Alertmanager (API v2, `POST /api/v2/alerts`).

`submit` only appends to a bounded in-memory queue and returns; a background thread posts
batches in order, retrying with exponential backoff while Alertmanager is down, so the stream
is never blocked or slowed and nothing queued is lost. When the queue is full the oldest
notification is dropped and counted (`overflow`): a newer state of the same alert is worth
more than an older one.

Alertmanager resolves a firing alert that is not re-sent within its `resolve_timeout`, so
alerts still firing are re-sent every `resend_interval_s` while the queue is idle (the same
thing Prometheus does); a resolved notification carries `endsAt` and ends it at once."""

from __future__ import annotations

import logging
import random
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson

from streams.errors import CallstreamError
from streams.feed import Alert, parse_alert

log = logging.getLogger("callstream.alertmanager")

API_PATH = "/api/v2/alerts"


def alerts_endpoint(url: str) -> str:
    """The v2 alerts endpoint for an Alertmanager base URL (one-line error when unusable)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CallstreamError(f"--alertmanager-url must be an http(s) URL such as "
                              f"http://127.0.0.1:9093, got {url!r}")
    base = url.rstrip("/")
    return base if base.endswith(API_PATH) else base + API_PATH


def to_alertmanager(alert: Alert, generator_url: str | None = None) -> dict:
    """One alert in Alertmanager's v2 `postableAlert` form (labels and annotations are strings)."""
    labels = {k: v for k, v in alert.labels.items()}
    labels.setdefault("alertname", alert.rule)
    annotations = {"summary": alert.summary}
    if alert.value is not None:
        annotations["value"] = f"{alert.value:g}"
    if alert.threshold is not None:
        annotations["threshold"] = f"{alert.threshold:g}"
    if alert.unit:
        annotations["unit"] = alert.unit
    out = {"labels": labels, "annotations": annotations, "startsAt": alert.starts_at}
    if alert.status == "resolved":
        out["endsAt"] = alert.ends_at or alert.at
    if generator_url:
        out["generatorURL"] = generator_url
    return out


@dataclass(frozen=True)
class SenderStats:
    queued: int
    sent: int
    overflow: int
    failed_attempts: int
    rejected: int
    invalid: int
    up: bool | None              # None until the first attempt
    last_error: str | None


class _Item:
    __slots__ = ("payload", "refresh")

    def __init__(self, payload: dict, refresh: bool = False) -> None:
        self.payload = payload
        self.refresh = refresh


class AlertmanagerSender:
    """Background, ordered, retrying delivery of alert notifications."""

    def __init__(self, url: str, queue_size: int = 10_000, batch_max: int = 64,
                 timeout_s: float = 5.0, backoff_initial_s: float = 0.5,
                 backoff_max_s: float = 30.0, resend_interval_s: float = 60.0,
                 generator_url: str | None = None) -> None:
        self.endpoint = alerts_endpoint(url)
        self.queue_size = queue_size
        self.batch_max = batch_max
        self.timeout_s = timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.resend_interval_s = resend_interval_s
        self.generator_url = generator_url
        self._queue: deque[_Item] = deque()
        self._firing: dict[str, dict] = {}     # fingerprint -> payload, for re-sends
        self._cond = threading.Condition()
        self._stopping = False
        self._drain_until: float | None = None
        self._thread: threading.Thread | None = None
        self._sent = self._overflow = self._failed = self._rejected = self._invalid = 0
        self._up: bool | None = None
        self._last_error: str | None = None
        self._last_send = time.monotonic()

    # -- producer side (the stream) -----------------------------------------------------
    def submit(self, record: dict) -> bool:
        """Queue one alert record (as emitted by the rules); never blocks on the network."""
        alert = parse_alert(record)
        if alert is None:
            with self._cond:
                self._invalid += 1
            return False
        payload = to_alertmanager(alert, self.generator_url)
        with self._cond:
            if alert.status == "firing":
                self._firing[alert.fingerprint] = payload
            else:
                self._firing.pop(alert.fingerprint, None)
            if len(self._queue) >= self.queue_size:
                self._queue.popleft()
                self._overflow += 1
            self._queue.append(_Item(payload))
            self._cond.notify()
        return True

    def stats(self) -> SenderStats:
        with self._cond:
            return SenderStats(len(self._queue), self._sent, self._overflow, self._failed,
                               self._rejected, self._invalid, self._up, self._last_error)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> "AlertmanagerSender":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="alertmanager-sender",
                                            daemon=True)
            self._thread.start()
        return self

    def close(self, drain_s: float = 5.0) -> None:
        """Stop, after trying for up to `drain_s` to deliver what is still queued."""
        with self._cond:
            self._drain_until = time.monotonic() + drain_s
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(drain_s + self.timeout_s + 1.0)
        left = self.stats().queued
        if left:
            log.warning("alertmanager: %d notification(s) not delivered at shutdown", left)

    # -- the thread ----------------------------------------------------------------------
    def _run(self) -> None:
        backoff = self.backoff_initial_s
        isolate = 0     # after a refused batch, post its items one by one to find the bad one
        while True:
            with self._cond:
                while not self._queue:
                    if self._stopping:
                        return
                    if self._refresh_due():
                        break
                    self._cond.wait(self._wait_s())
                if self._stopping and (not self._queue or time.monotonic() > self._drain_until):
                    return
                size = 1 if isolate else self.batch_max
                batch = [self._queue[i] for i in range(min(size, len(self._queue)))]
            outcome = self._post([item.payload for item in batch])
            with self._cond:
                if outcome == "rejected" and len(batch) > 1:
                    isolate = len(batch)
                    continue
                if outcome in ("ok", "rejected"):
                    isolate = max(isolate - 1, 0)
                    # the batch is still at the head, less anything overflow dropped meanwhile
                    done = 0
                    while self._queue and self._queue[0] in batch:
                        done += not self._queue.popleft().refresh
                    if outcome == "ok":
                        self._sent += done
                    else:
                        self._rejected += done
                    backoff = self.backoff_initial_s
                    self._last_send = time.monotonic()
                    continue
                self._failed += 1
                if self._stopping and time.monotonic() > self._drain_until:
                    return
                self._cond.wait(backoff * random.uniform(0.9, 1.1))
                backoff = min(backoff * 2, self.backoff_max_s)

    def _refresh_due(self) -> bool:
        """Queue a re-send of the alerts still firing if the interval passed (lock held)."""
        if self.resend_interval_s <= 0 or not self._firing:
            return False
        if time.monotonic() - self._last_send < self.resend_interval_s:
            return False
        for payload in self._firing.values():
            self._queue.append(_Item(payload, refresh=True))
        return True

    def _wait_s(self) -> float | None:
        if self.resend_interval_s <= 0 or not self._firing:
            return None
        return max(0.05, self.resend_interval_s - (time.monotonic() - self._last_send))

    def _post(self, payloads: list[dict]) -> str:
        """"ok", "rejected" (4xx: retrying cannot help) or "retry"."""
        req = urllib.request.Request(self.endpoint, data=orjson.dumps(payloads), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            exc.close()
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                self._note_error(f"HTTP {exc.code}", up=True)
                if len(payloads) == 1:
                    log.error("alertmanager refused a notification (HTTP %d): %s", exc.code,
                              payloads[0].get("labels"))
                return "rejected"
            self._note_error(f"HTTP {exc.code}", up=False)
            return "retry"
        except (OSError, ValueError) as exc:   # URLError, refused, reset, timeout
            self._note_error(str(getattr(exc, "reason", exc)), up=False)
            return "retry"
        if self._up is False:
            log.warning("alertmanager at %s reachable again", self.endpoint)
        self._up = True
        return "ok"

    def _note_error(self, error: str, up: bool) -> None:
        if self._up is not False and not up:
            log.warning("alertmanager at %s unreachable (%s); retrying with backoff",
                        self.endpoint, error)
        self._up = up
        self._last_error = error
