"""The control-room live view: what the dashboard, the HTTP API and /metrics show.

`LiveView` is fed the records the processor publishes (window stats, alert state changes),
dead-letter reasons and health facts, and keeps only what people look at: the latest window
per (trust, category, window), 24 hours of trend points per (trust, category), the active and
recent alerts. It knows nothing of Kafka or HTTP, so it is tested directly and the adapter
that feeds it (today the worker's output topics) can change without touching it.

Updates fan out to Server-Sent-Events subscribers through bounded per-subscriber queues: a
slow browser loses its oldest queued updates (counted) and is then sent a fresh snapshot,
it never holds up the stream. Everything here runs on one thread (the worker's event loop).

Records are parsed into typed values with only the contract's fields, so nothing a producer
adds (let alone a raw event payload) is ever echoed to a browser. Domain time is event time
(window ends); wall-clock time is used only for operational facts: how long ago data last
moved forward (staleness) and how far the watermark lags behind now."""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterable, NamedTuple

import orjson

from streams.timefmt import format_ts, parse_ts

#: Category keys of window records, in display order (C1T is a reporting split of C1).
CATEGORIES = ("C1", "C1T", "C2", "C3", "C4")
ALL_TRUSTS = "*"
DAY_S = 86_400
TRIM_EVERY = 256        # unparsed trend records of a key between two trims


@dataclass(frozen=True)
class Target:
    """ARP standards for one category, in seconds (None: no standard for that measure)."""

    mean_s: float | None
    p90_s: float | None


#: The national ARP response standards (DOMAIN §1). The one table the dashboard, the metrics
#: and the report read; it will point at the alert rules' targets once those exist.
TARGETS: dict[str, Target] = {
    "C1": Target(mean_s=7 * 60, p90_s=15 * 60),
    "C2": Target(mean_s=18 * 60, p90_s=40 * 60),
    "C3": Target(mean_s=None, p90_s=120 * 60),
    "C4": Target(mean_s=None, p90_s=180 * 60),
}

#: A measure at or above this share of its target is "close" (amber), above it "breached".
CLOSE_SHARE = 0.9

WITHIN, CLOSE, BREACHED = "within", "close", "breached"
_RANK = {None: 0, WITHIN: 1, CLOSE: 2, BREACHED: 3}


def rate(value: float | None, target: float | None) -> str | None:
    """within / close / breached for one measure against its target; None if either is absent."""
    if value is None or target is None:
        return None
    if value > target:
        return BREACHED
    return CLOSE if value >= CLOSE_SHARE * target else WITHIN


def worst(*statuses: str | None) -> str | None:
    return max(statuses, key=_RANK.__getitem__)


# -- typed records -------------------------------------------------------------------------

def _num(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _int(v, default: int | None = 0) -> int | None:
    if isinstance(v, bool) or not isinstance(v, int):
        return default
    return v


def _str(v, limit: int = 64) -> str | None:
    return v if isinstance(v, str) and 0 < len(v) <= limit else None


@lru_cache(maxsize=8192)
def _cached_ts(value: str) -> int | None:
    return parse_ts(value)


def _ts(value) -> int | None:
    """parse_ts, cached for strings: a window boundary is shared by dozens of records."""
    return _cached_ts(value) if isinstance(value, str) else parse_ts(value)


@dataclass(slots=True)
class CategoryStats:
    """One closed window of one category for one trust ("*" = all trusts). Never changed
    once made; not frozen because a frozen dataclass is made field by field through
    `object.__setattr__`, and a worker catching up makes one per trend record it reads."""

    window: str
    start: str
    end: str
    end_ms: int
    trust: str
    category: str
    count: int
    mean_s: float | None
    p50_s: float | None
    p90_s: float | None
    p99_s: float | None
    max_s: float | None
    late: int
    waiting: int | None          # calls triaged for dispatch with no crew yet, at `end`
    longest_wait_s: float | None

    @property
    def mean_status(self) -> str | None:
        t = TARGETS.get(self.category)
        return rate(self.mean_s, t.mean_s if t else None)

    @property
    def p90_status(self) -> str | None:
        t = TARGETS.get(self.category)
        return rate(self.p90_s, t.p90_s if t else None)

    @property
    def status(self) -> str | None:
        return worst(self.mean_status, self.p90_status)

    def to_dict(self) -> dict:
        mean_status, p90_status = self.mean_status, self.p90_status
        return {"window": self.window, "start": self.start, "end": self.end,
                "trust": self.trust, "category": self.category, "count": self.count,
                "mean_s": self.mean_s, "p50_s": self.p50_s, "p90_s": self.p90_s,
                "p99_s": self.p99_s, "max_s": self.max_s, "late": self.late,
                "waiting": self.waiting, "longest_wait_s": self.longest_wait_s,
                "status": worst(mean_status, p90_status), "mean_status": mean_status,
                "p90_status": p90_status}


@dataclass(frozen=True, slots=True)
class CallTotals:
    """Call outcomes of one window for one trust (the `ALL` record)."""

    window: str
    start: str
    end: str
    end_ms: int
    trust: str
    calls: int
    hear_and_treat: int
    redirected: int
    redirected_c1: int
    responses: int

    @property
    def hear_and_treat_share(self) -> float | None:
        return self.hear_and_treat / self.calls if self.calls else None

    @property
    def redirected_share(self) -> float | None:
        return self.redirected / self.calls if self.calls else None

    def to_dict(self) -> dict:
        return {"window": self.window, "start": self.start, "end": self.end,
                "trust": self.trust, "calls": self.calls, "hear_and_treat": self.hear_and_treat,
                "redirected": self.redirected, "redirected_c1": self.redirected_c1,
                "responses": self.responses, "hear_and_treat_share": self.hear_and_treat_share,
                "redirected_share": self.redirected_share}


def parse_stats(rec: dict) -> CategoryStats | CallTotals | None:
    """A window record (CONTRACT §4) as a typed value; None when it is not one. A worker
    catching up parses every trend record the merge wrote: the field checks take the
    common type first (`_num`, `_int` otherwise)."""
    if not isinstance(rec, dict):
        return None
    g = rec.get
    window, trust, category = _str(g("window"), 16), _str(g("trust"), 16), g("category")
    start, end = g("start"), g("end")
    end_ms = _ts(end)
    if window is None or trust is None or end_ms is None or _ts(start) is None:
        return None
    if category == "ALL":
        return CallTotals(window, start, end, end_ms, trust,
                          _int(g("calls")), _int(g("hear_and_treat")),
                          _int(g("redirected")), _int(g("redirected_c1")),
                          _int(g("responses")))
    if category not in CATEGORIES:
        return None
    count, late, waiting = g("count"), g("late"), g("waiting")
    figures = [g("mean_s"), g("p50_s"), g("p90_s"), g("p99_s"), g("max_s"),
               g("longest_wait_s")]
    for i, v in enumerate(figures):
        if type(v) is not float:
            figures[i] = _num(v)
    mean_s, p50_s, p90_s, p99_s, max_s, longest = figures
    return CategoryStats(window, start, end, end_ms, trust, category,
                         count if type(count) is int else _int(count),
                         mean_s, p50_s, p90_s, p99_s, max_s,
                         late if type(late) is int else _int(late),
                         waiting if type(waiting) is int else _int(waiting, None), longest)


_SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert state change (the record streams.rules emits to calls.alerts)."""

    fingerprint: str
    rule: str
    status: str                  # "firing" | "resolved"
    at: str                      # event time of this state change
    at_ms: int
    starts_at: str
    ends_at: str | None
    labels: dict
    value: float | None
    threshold: float | None
    unit: str | None
    summary: str
    repeat: int

    @property
    def severity(self) -> str:
        return self.labels.get("severity", "warning")

    def to_dict(self) -> dict:
        return {"fingerprint": self.fingerprint, "rule": self.rule, "status": self.status,
                "at": self.at, "starts_at": self.starts_at, "ends_at": self.ends_at,
                "labels": dict(self.labels), "value": self.value, "threshold": self.threshold,
                "unit": self.unit, "summary": self.summary, "repeat": self.repeat}


def parse_alert(rec: dict) -> Alert | None:
    """An alert record as a typed value (labels kept only when they are short strings)."""
    if not isinstance(rec, dict):
        return None
    fingerprint, rule = _str(rec.get("fingerprint")), _str(rec.get("rule"))
    status = rec.get("status")
    starts_at = rec.get("starts_at")
    at = rec.get("at", starts_at if status == "firing" else rec.get("ends_at"))
    at_ms = _ts(at)
    if fingerprint is None or rule is None or status not in ("firing", "resolved") \
            or at_ms is None or _ts(starts_at) is None:
        return None
    ends_at = rec.get("ends_at")
    if ends_at is not None and _ts(ends_at) is None:
        ends_at = None
    raw_labels = rec.get("labels") if isinstance(rec.get("labels"), dict) else {}
    labels = {k: v for k, v in raw_labels.items()
              if isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 128}
    labels.setdefault("alertname", rule)
    summary = rec.get("summary") if isinstance(rec.get("summary"), str) else rule
    unit = rec.get("unit") if isinstance(rec.get("unit"), str) else None
    return Alert(fingerprint, rule, status, at, at_ms, starts_at, ends_at, labels,
                 _num(rec.get("value")), _num(rec.get("threshold")), unit, summary[:500],
                 _int(rec.get("repeat")))


class TrendPoint(NamedTuple):
    """One window of a trend line (ordered by its end, event time)."""

    end_ms: int
    count: int
    mean_s: float | None
    p90_s: float | None

    def to_dict(self) -> dict:
        return {"end": format_ts(self.end_ms), "count": self.count, "mean_s": self.mean_s,
                "p90_s": self.p90_s}


@dataclass(frozen=True)
class HealthFacts:
    """What the adapter measures about the stream (None: not known)."""

    broker_connected: bool | None = None
    consumer_lag: int | None = None      # input messages not yet processed (all partitions)
    events_per_s: float | None = None    # input events processed per second, recently
    watermark_ms: int | None = None      # event time the processor has completed


# -- fan-out -------------------------------------------------------------------------------

STATS, TOTALS, ALERT, HEALTH, SNAPSHOT = "stats", "totals", "alert", "health", "snapshot"
ALL_KINDS = frozenset({STATS, TOTALS, ALERT, HEALTH})


def sse_frame(kind: str, data, seq: int | None = None) -> bytes:
    """One Server-Sent Events message (JSON data never contains a raw newline)."""
    head = f"event: {kind}\n" + (f"id: {seq}\n" if seq is not None else "")
    return head.encode() + b"data: " + orjson.dumps(data) + b"\n\n"


class Subscription:
    """One SSE client's bounded queue of encoded frames (drop-oldest, counted)."""

    def __init__(self, kinds: frozenset, maxsize: int) -> None:
        self.kinds = kinds
        self.maxsize = maxsize
        self.frames: deque[bytes] = deque()
        self.dropped = 0
        self.lost = False            # frames were dropped since the last delivery
        self.closed = False
        self._wake = asyncio.Event()

    def push(self, frame: bytes) -> bool:
        """Queue a frame; returns False when the oldest had to be dropped to make room."""
        kept = True
        if len(self.frames) >= self.maxsize:
            self.frames.popleft()
            self.dropped += 1
            self.lost = True
            kept = False
        self.frames.append(frame)
        self._wake.set()
        return kept

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def next(self, timeout: float) -> tuple[list[bytes], bool] | None:
        """Wait up to `timeout` s; (frames, lost) - lost means a snapshot should be resent -
        or None once closed. An empty list means nothing happened (send a keep-alive)."""
        if not self.frames and not self.closed:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        if self.closed:
            return None
        frames = list(self.frames)
        self.frames.clear()
        lost, self.lost = self.lost, False
        return frames, lost


# -- the view ------------------------------------------------------------------------------

@dataclass
class _Progress:
    max_end_ms: int | None = None        # latest window end seen (event time)
    watermark_ms: int | None = None
    wall: float | None = None            # wall time either last moved forward


@dataclass
class LiveView:
    """Current state for the control room, fed one record at a time."""

    trend_window: str = "1h"
    trend_span_s: int = DAY_S
    recent_alerts: int = 100
    stale_after_s: float = 300.0
    queue_size: int = 1000
    timezone: str = "Europe/London"
    clock: Callable[[], float] = time.time

    stats: dict = field(default_factory=dict, init=False)      # (trust, cat, window) -> CategoryStats
    totals: dict = field(default_factory=dict, init=False)     # (trust, window) -> CallTotals
    _trends: dict = field(default_factory=dict, init=False)    # (trust, cat) -> [TrendPoint]
    #: trend-window records not parsed yet (`on_trend_records`): record key -> [records
    #: left after the last trim, the records], oldest first
    _unparsed: dict = field(default_factory=dict, init=False)
    active: dict = field(default_factory=dict, init=False)     # fingerprint -> Alert
    last_change: dict = field(default_factory=dict, init=False)  # fingerprint -> event time
    recent: deque = field(init=False)
    dead_letters: dict = field(default_factory=dict, init=False)  # reason -> count
    ignored: int = field(default=0, init=False)                # records that were not records
    facts: HealthFacts = field(default_factory=HealthFacts, init=False)
    facts_wall: float | None = field(default=None, init=False)
    subscribers: list = field(default_factory=list, init=False)
    dropped: int = field(default=0, init=False)                # SSE frames dropped, all clients
    seq: int = field(default=0, init=False)
    _progress: _Progress = field(default_factory=_Progress, init=False)

    def __post_init__(self) -> None:
        self.recent = deque(maxlen=self.recent_alerts)

    # -- input ---------------------------------------------------------------------------
    def on_stats(self, record: dict) -> None:
        """A window-stats record as published on calls.stats."""
        item = parse_stats(record)
        if item is None:
            self.ignored += 1
            return
        if type(item) is CallTotals:
            key = (item.trust, item.window)
            old = self.totals.get(key)
            if old is not None and old.end_ms > item.end_ms:
                return
            self.totals[key] = item
            self._advance(item.end_ms)
            self._publish(TOTALS, item)
            return
        key = (item.trust, item.category, item.window)
        old = self.stats.get(key)
        if old is None or old.end_ms <= item.end_ms:
            self.stats[key] = item
        if item.window == self.trend_window:
            self._add_trend(item)
        self._advance(item.end_ms)
        if old is None or old.end_ms <= item.end_ms:
            self._publish(STATS, item)

    def on_alert(self, record: dict) -> None:
        """An alert state change as published on calls.alerts."""
        alert = parse_alert(record)
        if alert is None:
            self.ignored += 1
            return
        last = self.last_change.get(alert.fingerprint)
        if last is not None and last > alert.at_ms:
            return                          # an older state change arriving late
        self.last_change[alert.fingerprint] = alert.at_ms
        if alert.status == "firing":
            self.active[alert.fingerprint] = alert
        else:
            self.active.pop(alert.fingerprint, None)
        if alert.status == "resolved" or alert.repeat == 0:
            self._add_recent(alert)
        self._publish(ALERT, alert)

    def _add_recent(self, alert: Alert) -> None:
        """Newest event time first, whatever order partitions deliver different alerts in."""
        recent = self.recent
        i = 0
        while i < len(recent) and recent[i].at_ms > alert.at_ms:
            i += 1
        if i == len(recent) and len(recent) == recent.maxlen:
            return                          # older than everything kept
        if len(recent) == recent.maxlen:
            recent.pop()
        recent.insert(i, alert)

    def on_dead_letter(self, reason: str) -> None:
        """Only the reason is kept: a rejected record's bytes never reach the feed."""
        reason = reason if isinstance(reason, str) and len(reason) <= 64 else "unknown"
        self.dead_letters[reason] = self.dead_letters.get(reason, 0) + 1

    def update_health(self, facts: HealthFacts) -> None:
        """Latest facts from the adapter; pushed to the page (it also drives staleness)."""
        self.facts = facts
        self.facts_wall = self.clock()
        wm = facts.watermark_ms
        if wm is not None and (self._progress.watermark_ms is None
                               or wm > self._progress.watermark_ms):
            self._progress.watermark_ms = wm
            self._progress.wall = self.facts_wall
        self._publish(HEALTH, self)

    def _advance(self, end_ms: int) -> None:
        p = self._progress
        if p.max_end_ms is None or end_ms > p.max_end_ms:
            p.max_end_ms = end_ms
            p.wall = self.clock()

    def on_trend_records(self, key: bytes, values: list[bytes]) -> None:
        """Trend-window records of one key (`trust/category/window`) that a later record of
        the same key supersedes as the latest: all they add is trend points, so they are
        kept as bytes and parsed when the trends are read (`trends`). A worker catching up
        reads days of them and keeps a day: the older ones are dropped unparsed (`_trim`),
        which makes catching up cheaper by most of the feed's work."""
        q = self._unparsed.get(key)
        if q is None:
            q = self._unparsed[key] = [0, []]
        q[1] += values
        if len(q[1]) - q[0] >= TRIM_EVERY:
            self._trim(key, q)

    def _trim(self, key: bytes, q: list) -> None:
        """Drop the key's unparsed records that end a trend span or more before its newest:
        the merge publishes a key's windows in time order, so the first to keep is found
        by bisection, a few parses. A record without a readable end: all are parsed now."""
        values = q[1]
        newest = _end_of(values[-1])
        if newest is None:
            self._parse_trend(self._unparsed.pop(key)[1])
            return
        horizon = newest - self.trend_span_s * 1000
        lo, hi = 0, len(values) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            end = _end_of(values[mid])
            if end is None:
                self._parse_trend(self._unparsed.pop(key)[1])
                return
            if end <= horizon:
                lo = mid + 1
            else:
                hi = mid
        del values[:lo]
        q[0] = len(values)

    @property
    def trends(self) -> dict:
        """(trust, category) -> [TrendPoint], oldest first (records kept as bytes parsed)."""
        while self._unparsed:
            self._parse_trend(self._unparsed.popitem()[1][1])
        return self._trends

    def _parse_trend(self, values: list[bytes]) -> None:
        for value in values:
            item = parse_stats(parse_json(value))
            if item is None:
                self.ignored += 1
            elif type(item) is CategoryStats and item.window == self.trend_window:
                self._add_trend(item)

    def _add_trend(self, item: CategoryStats) -> None:
        points = self._trends.setdefault((item.trust, item.category), [])
        point = TrendPoint(item.end_ms, item.count, item.mean_s, item.p90_s)
        i = bisect.bisect_left(points, (item.end_ms,))
        if i < len(points) and points[i][0] == item.end_ms:
            points[i] = point
        else:
            points.insert(i, point)
        horizon = points[-1][0] - self.trend_span_s * 1000
        if points[0][0] <= horizon:
            del points[:bisect.bisect_right(points, (horizon, float("inf")))]

    # -- fan-out -------------------------------------------------------------------------
    def subscribe(self, kinds: Iterable[str] = ALL_KINDS, maxsize: int | None = None) -> Subscription:
        sub = Subscription(frozenset(kinds), maxsize or self.queue_size)
        self.subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self.subscribers:
            self.subscribers.remove(sub)
        sub.close()

    def close(self) -> None:
        """Ends every stream (the web server is shutting down)."""
        for sub in list(self.subscribers):
            self.unsubscribe(sub)

    def _publish(self, kind: str, item) -> None:
        """Encode once for every subscriber that wants `kind` (nothing at all without one)."""
        if not self.subscribers:
            return
        self.seq += 1
        frame = sse_frame(kind, item.health() if item is self else item.to_dict(), self.seq)
        for sub in self.subscribers:
            if kind in sub.kinds and not sub.push(frame):
                self.dropped += 1

    def snapshot_frame(self, kinds: frozenset) -> bytes:
        """The state a new (or resynchronised) subscriber starts from."""
        data: dict = {}
        if STATS in kinds or TOTALS in kinds:
            data["stats"] = self.stats_list()
            data["totals"] = self.totals_list()
            data["trends"] = self.trends_list()
            data["targets"] = targets_dict()
            data["trend_window"] = self.trend_window
            data["timezone"] = self.timezone
        if ALERT in kinds:
            data["alerts"] = self.alerts()
        if HEALTH in kinds:
            data["health"] = self.health()
        return sse_frame(SNAPSHOT, data, self.seq)

    # -- queries -------------------------------------------------------------------------
    def stats_list(self, window: str | None = None, trust: str | None = None,
                   category: str | None = None) -> list[dict]:
        return [s.to_dict() for (t, c, w), s in sorted(self.stats.items(), key=_stats_order)
                if (window is None or w == window) and (trust is None or t == trust)
                and (category is None or c == category)]

    def totals_list(self, window: str | None = None, trust: str | None = None) -> list[dict]:
        return [s.to_dict() for (t, w), s in sorted(self.totals.items(),
                                                     key=lambda kv: (_trust_order(kv[0][0]), kv[0][1]))
                if (window is None or w == window) and (trust is None or t == trust)]

    def trends_list(self, trust: str | None = None) -> list[dict]:
        return [{"trust": t, "category": c, "window": self.trend_window,
                 "points": [p.to_dict() for p in pts]}
                for (t, c), pts in sorted(self.trends.items(),
                                          key=lambda kv: (_trust_order(kv[0][0]), kv[0][1]))
                if trust is None or t == trust]

    def windows(self) -> list[str]:
        return sorted({w for _, _, w in self.stats} | {w for _, w in self.totals},
                      key=window_order)

    def pressure(self) -> list[dict]:
        """Calls waiting and the longest wait per trust and category, from the latest window."""
        latest: dict[tuple[str, str], CategoryStats] = {}
        for (trust, cat, _), s in self.stats.items():
            if s.waiting is None:
                continue
            cur = latest.get((trust, cat))
            if cur is None or s.end_ms > cur.end_ms:
                latest[(trust, cat)] = s
        return [{"trust": t, "category": c, "at": s.end, "waiting": s.waiting,
                 "longest_wait_s": s.longest_wait_s}
                for (t, c), s in sorted(latest.items(),
                                        key=lambda kv: (_trust_order(kv[0][0]), kv[0][1]))]

    def active_alerts(self) -> list[Alert]:
        return sorted(self.active.values(),
                      key=lambda a: (_SEVERITY_ORDER.get(a.severity, 9), a.starts_at, a.fingerprint))

    def alerts(self) -> dict:
        return {"active": [a.to_dict() for a in self.active_alerts()],
                "recent": [a.to_dict() for a in self.recent]}

    def health(self) -> dict:
        now = self.clock()
        f, p = self.facts, self._progress
        wm = f.watermark_ms
        age = None if p.wall is None else round(now - p.wall, 1)
        return {
            "broker_connected": f.broker_connected,
            "consumer_lag": f.consumer_lag,
            "events_per_s": f.events_per_s,
            "watermark": None if wm is None else format_ts(wm),
            "watermark_delay_s": None if wm is None else round(now - wm / 1000.0, 1),
            "data_through": None if p.max_end_ms is None else format_ts(p.max_end_ms),
            "has_data": p.max_end_ms is not None,
            "data_age_s": age,
            "stale": age is None or age > self.stale_after_s,
            "stale_after_s": self.stale_after_s,
            "facts_age_s": None if self.facts_wall is None else round(now - self.facts_wall, 1),
            "dead_letters": sum(self.dead_letters.values()),
            "dead_letter_reasons": dict(sorted(self.dead_letters.items())),
            "alerts_firing": len(self.active),
            "subscribers": len(self.subscribers),
            "sse_dropped": self.dropped,
        }


def parse_json(value: bytes | None):
    """A record's JSON value; None when it is not JSON."""
    if not value:
        return None
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return None


def _end_of(value: bytes) -> int | None:
    """The end (ms) of a window record given as bytes; None when it has none."""
    rec = parse_json(value)
    return _ts(rec.get("end")) if isinstance(rec, dict) else None


def targets_dict() -> dict:
    return {c: {"mean_s": t.mean_s, "p90_s": t.p90_s} for c, t in TARGETS.items()}


def _trust_order(trust: str) -> tuple[int, str]:
    return (0 if trust == ALL_TRUSTS else 1, trust)


def window_order(name: str) -> tuple[int, float, str]:
    """Rolling windows by length ("15m" < "1h" < "24h"), then calendar ones (day, mtd)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if name[-1:] in units and name[:-1].isdigit():
        return (0, int(name[:-1]) * units[name[-1]], name)
    return (1, {"day": 0, "mtd": 1}.get(name, 2), name)


def _stats_order(kv) -> tuple:
    (trust, cat, window), _ = kv
    return (_trust_order(trust), CATEGORIES.index(cat), window_order(window))
