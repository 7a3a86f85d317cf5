"""Attaching the control-room feed to a Faust app: the worker's one call into this package.

Kept apart from `streams.worker` so the worker's restructuring (scale-out) only has to keep
calling `attach` and passing alert records to `ControlRoom.alert`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable

from streams.alertmanager import AlertmanagerSender, alerts_endpoint
from streams.feed import LiveView
from streams.topics import TopicNames
from streams.web.server import WebSecurity, check_security, mount
from streams.web.topicfeed import TopicFeed


@dataclass
class ControlRoom:
    live: LiveView
    feed: TopicFeed
    alertmanager: AlertmanagerSender | None

    def alert(self, record: dict) -> None:
        """An alert state change this worker published: notify Alertmanager (non-blocking)."""
        if self.alertmanager is not None:
            self.alertmanager.submit(record)


def check_options(web_host: str, web_token: str | None,
                  alertmanager_url: str | None) -> WebSecurity:
    """One-line errors for settings the worker must not start with (call before Kafka)."""
    if alertmanager_url:
        alerts_endpoint(alertmanager_url)
    return check_security(web_host, web_token)


def attach(app, *, bootstrap: str, topics: TopicNames, group_id: str, web_host: str,
           web_token: str | None, alertmanager_url: str | None,
           watermark: Callable[[], int | None], timezone: str = "Europe/London") -> ControlRoom:
    """Mount page, API and /metrics on the app's web server; run the topic feed as an app task;
    start the Alertmanager sender (drained when the app shuts down)."""
    security = check_options(web_host, web_token, alertmanager_url)
    live = LiveView(timezone=timezone)
    sender = AlertmanagerSender(alertmanager_url).start() if alertmanager_url else None
    mount(app.web.web_app, live, security, sender)
    feed = TopicFeed(live, bootstrap, topics, group_id, watermark)
    app.task(feed.run)
    if sender is not None:
        async def drain(_app, **_kwargs) -> None:
            await asyncio.get_running_loop().run_in_executor(None, sender.close)
        app.on_before_shutdown.connect(drain)
    return ControlRoom(live, feed, sender)
