"""Prometheus `/metrics` for the control-room feed: a custom collector over the `LiveView`.

The collector reads the view at scrape time, so nothing on the stream path updates metric
objects, and every gauge is exactly what the dashboard shows. Each web app gets its own
registry (no process-global state), which also keeps tests independent."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector

from streams.feed import TARGETS, LiveView

__all__ = ["LiveViewCollector", "make_registry", "render"]

_WINDOW_LABELS = ["trust", "category", "window"]
_QUANTILES = (("0.5", "p50_s"), ("0.9", "p90_s"), ("0.99", "p99_s"))


class LiveViewCollector:
    """Yields the view's state as metric families on every scrape."""

    def __init__(self, live: LiveView, alertmanager=None) -> None:
        self.live = live
        self.alertmanager = alertmanager

    def describe(self):
        return []   # families depend on the data; skip the registration-time collect

    def collect(self):
        live = self.live
        yield from self._windows(live)
        yield from self._totals(live)
        yield from self._pressure(live)
        yield from self._targets()
        yield from self._alerts(live)
        yield from self._health(live)
        if self.alertmanager is not None:
            yield from self._alertmanager(self.alertmanager.stats())

    @staticmethod
    def _windows(live: LiveView):
        count = GaugeMetricFamily("callstream_window_responses",
                                  "Responses (clock stopped) in the latest closed window",
                                  labels=_WINDOW_LABELS)
        mean = GaugeMetricFamily("callstream_window_response_mean_seconds",
                                 "Mean response time in the latest closed window (exact)",
                                 labels=_WINDOW_LABELS)
        cent = GaugeMetricFamily("callstream_window_response_seconds",
                                 "Response-time centiles in the latest closed window (sketch, <=1% error)",
                                 labels=_WINDOW_LABELS + ["quantile"])
        mx = GaugeMetricFamily("callstream_window_response_max_seconds",
                               "Longest response in the latest closed window", labels=_WINDOW_LABELS)
        end = GaugeMetricFamily("callstream_window_end_timestamp_seconds",
                                "Event-time end of the latest closed window", labels=_WINDOW_LABELS)
        for (trust, cat, window), s in live.stats.items():
            labels = [trust, cat, window]
            count.add_metric(labels, s.count)
            end.add_metric(labels, s.end_ms / 1000.0)
            if s.mean_s is not None:
                mean.add_metric(labels, s.mean_s)
            if s.max_s is not None:
                mx.add_metric(labels, s.max_s)
            for q, attr in _QUANTILES:
                v = getattr(s, attr)
                if v is not None:
                    cent.add_metric(labels + [q], v)
        yield from (count, mean, cent, mx, end)

    @staticmethod
    def _totals(live: LiveView):
        labels = ["trust", "window"]
        calls = GaugeMetricFamily("callstream_window_calls", "Calls received in the latest closed window",
                                  labels=labels)
        hat = GaugeMetricFamily("callstream_window_hear_and_treat_ratio",
                                "Share of the window's calls resolved by hear and treat", labels=labels)
        red = GaugeMetricFamily("callstream_window_redirected_ratio",
                                "Share of the window's calls redirected to another service", labels=labels)
        for (trust, window), t in live.totals.items():
            calls.add_metric([trust, window], t.calls)
            if t.calls:
                hat.add_metric([trust, window], t.hear_and_treat_share)
                red.add_metric([trust, window], t.redirected_share)
        yield from (calls, hat, red)

    @staticmethod
    def _pressure(live: LiveView):
        waiting = GaugeMetricFamily("callstream_calls_waiting",
                                    "Calls triaged for dispatch with no crew on scene yet",
                                    labels=["trust", "category"])
        longest = GaugeMetricFamily("callstream_longest_wait_seconds",
                                    "Longest current wait for a crew", labels=["trust", "category"])
        for p in live.pressure():
            waiting.add_metric([p["trust"], p["category"]], p["waiting"])
            if p["longest_wait_s"] is not None:
                longest.add_metric([p["trust"], p["category"]], p["longest_wait_s"])
        yield from (waiting, longest)

    @staticmethod
    def _targets():
        target = GaugeMetricFamily("callstream_target_seconds", "ARP response-time standard",
                                   labels=["category", "measure"])
        for cat, t in TARGETS.items():
            if t.mean_s is not None:
                target.add_metric([cat, "mean"], t.mean_s)
            if t.p90_s is not None:
                target.add_metric([cat, "p90"], t.p90_s)
        yield target

    @staticmethod
    def _alerts(live: LiveView):
        labels = ["alertname", "fingerprint", "trust", "category", "severity"]
        state = GaugeMetricFamily("callstream_alert_firing",
                                  "1 while the alert fires, 0 once resolved (recent alerts)",
                                  labels=labels)
        seen = set()
        for a in list(live.active.values()) + list(live.recent):
            if a.fingerprint in seen:
                continue
            seen.add(a.fingerprint)
            state.add_metric([a.labels.get("alertname", a.rule), a.fingerprint,
                              a.labels.get("trust", ""), a.labels.get("category", ""), a.severity],
                             1 if a.fingerprint in live.active else 0)
        firing = GaugeMetricFamily("callstream_alerts_firing", "Alerts firing now",
                                   labels=["severity"])
        by_sev: dict[str, int] = {}
        for a in live.active.values():
            by_sev[a.severity] = by_sev.get(a.severity, 0) + 1
        for sev in sorted(set(by_sev) | {"warning", "critical"}):
            firing.add_metric([sev], by_sev.get(sev, 0))
        yield from (state, firing)

    @staticmethod
    def _health(live: LiveView):
        f = live.facts
        h = live.health()
        if f.broker_connected is not None:
            yield GaugeMetricFamily("callstream_broker_connected",
                                    "1 when the worker reaches the Kafka broker",
                                    value=1 if f.broker_connected else 0)
        if f.events_per_s is not None:
            yield GaugeMetricFamily("callstream_events_per_second",
                                    "Input events processed per second (recent rate)",
                                    value=f.events_per_s)
        if f.consumer_lag is not None:
            yield GaugeMetricFamily("callstream_consumer_lag_messages",
                                    "Input messages not yet processed, all partitions",
                                    value=f.consumer_lag)
        if f.watermark_ms is not None:
            yield GaugeMetricFamily("callstream_watermark_timestamp_seconds",
                                    "Event time up to which processing is complete",
                                    value=f.watermark_ms / 1000.0)
            yield GaugeMetricFamily("callstream_watermark_delay_seconds",
                                    "How far the watermark is behind the wall clock",
                                    value=h["watermark_delay_s"])
        yield GaugeMetricFamily("callstream_data_stale", "1 when no window has closed recently",
                                value=1 if h["stale"] else 0)
        dead = CounterMetricFamily("callstream_dead_letters", "Rejected input records by reason",
                                   labels=["reason"])
        for reason, n in sorted(live.dead_letters.items()):
            dead.add_metric([reason], n)
        yield dead
        yield GaugeMetricFamily("callstream_sse_subscribers", "Open live-update streams",
                                value=len(live.subscribers))
        yield CounterMetricFamily("callstream_sse_dropped", "Live updates dropped for slow clients",
                                  value=live.dropped)

    @staticmethod
    def _alertmanager(s):
        yield GaugeMetricFamily("callstream_alertmanager_queued",
                                "Alert notifications waiting to be delivered", value=s.queued)
        yield CounterMetricFamily("callstream_alertmanager_sent",
                                  "Alert notifications delivered", value=s.sent)
        yield CounterMetricFamily("callstream_alertmanager_overflow",
                                  "Alert notifications dropped because the queue was full",
                                  value=s.overflow)
        yield CounterMetricFamily("callstream_alertmanager_failed_attempts",
                                  "Delivery attempts that failed (retried)", value=s.failed_attempts)
        yield CounterMetricFamily("callstream_alertmanager_rejected",
                                  "Notifications Alertmanager refused as invalid (not retried)",
                                  value=s.rejected)


def make_registry(live: LiveView, alertmanager=None, process: bool = True) -> CollectorRegistry:
    """A registry of its own: the live view, and the process's CPU/memory if asked."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LiveViewCollector(live, alertmanager))
    if process:
        ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry, accept: str | None = None) -> tuple[bytes, str]:
    """(body, content type) in the format the scraper's Accept header asks for: Prometheus
    text 0.0.4 by default, OpenMetrics when requested."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
