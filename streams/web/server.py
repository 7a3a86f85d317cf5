"""HTTP side of the control-room feed: dashboard page, JSON API, SSE streams and /metrics.

`mount` adds everything to an aiohttp Application: the Faust worker's own web server, or a
bare one (tests, a stand-alone viewer). Security defaults: a token is required on any
non-loopback address (`check_security` refuses to start without one) and, once set, guards
every route, Faust's own included; no CORS headers are ever added; the page is one document
with its script and style inline under a per-response CSP nonce, so it needs nothing from
the internet and nothing from another origin can run in it."""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from streams.errors import CallstreamError
from streams.feed import ALERT, ALL_KINDS, STATS, TOTALS, LiveView, targets_dict
from streams.metrics import make_registry, render

MIN_TOKEN_CHARS = 16
HEARTBEAT_S = 15.0
_LIMIT = 64   # longest accepted query-parameter value

STREAMS = {"/api/stream": ALL_KINDS, "/api/stream/stats": frozenset({STATS, TOTALS}),
           "/api/stream/alerts": frozenset({ALERT})}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class WebSecurity:
    """Where the web server listens and the bearer token it demands (None: no token)."""

    host: str = "127.0.0.1"
    token: str | None = None

    def allows(self, request: web.Request) -> bool:
        if self.token is None:
            return True
        given = request.query.get("token")
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())


def check_security(host: str, token: str | None) -> WebSecurity:
    """The settings the worker may start with, or a one-line reason it must not."""
    token = token or None
    if token is not None and (len(token) < MIN_TOKEN_CHARS or not token.isascii()
                              or not token.isprintable() or " " in token):
        raise CallstreamError(f"the web token must be at least {MIN_TOKEN_CHARS} printable "
                              "ASCII characters without spaces (e.g. `openssl rand -hex 16`)")
    if token is None and not is_loopback(host):
        raise CallstreamError(f"--web-host {host} is reachable from other machines: set a token "
                              "with --web-token or CALLSTREAM_WEB_TOKEN (or listen on 127.0.0.1)")
    return WebSecurity(host, token)


# -- the page ------------------------------------------------------------------------------

def _asset(name: str) -> str:
    return resources.files("streams.web").joinpath("static", name).read_text("utf-8")


class Page:
    """dashboard.html with its CSS and JS inlined once; a fresh nonce per response."""

    def __init__(self) -> None:
        self.template = (_asset("dashboard.html").replace("{{css}}", _asset("dashboard.css"))
                         .replace("{{js}}", _asset("dashboard.js")))

    def response(self) -> web.Response:
        nonce = secrets.token_urlsafe(16)
        csp = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
               "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
               "frame-ancestors 'none'")
        return web.Response(text=self.template.replace("{{nonce}}", nonce),
                            content_type="text/html", headers={"Content-Security-Policy": csp})


# -- mounting ------------------------------------------------------------------------------

def mount(app: web.Application, live: LiveView, security: WebSecurity,
          alertmanager=None, heartbeat_s: float = HEARTBEAT_S) -> None:
    """Routes, the token guard and response headers on `app` (before it starts)."""
    page = Page()
    registry = make_registry(live, alertmanager)

    @web.middleware
    async def guard(request: web.Request, handler):
        if not security.allows(request):
            return web.json_response(
                {"error": "a token is required: send `Authorization: Bearer TOKEN` or ?token=TOKEN"},
                status=401, headers={"WWW-Authenticate": 'Bearer realm="callstream"'})
        if request.path == "/" and request.method in ("GET", "HEAD"):
            return page.response()   # Faust's built-in index owns the "/" route
        return await handler(request)

    async def headers(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"

    def arg(request: web.Request, name: str) -> str | None:
        value = request.query.get(name)
        if value is not None and len(value) > _LIMIT:
            raise web.HTTPBadRequest(text=f"{name} is too long")
        return value or None

    async def stats(request: web.Request) -> web.Response:
        window, trust = arg(request, "window"), arg(request, "trust")
        return web.json_response({
            "windows": live.windows(),
            "stats": live.stats_list(window, trust, arg(request, "category")),
            "totals": live.totals_list(window, trust),
            "targets": targets_dict()})

    async def trends(request: web.Request) -> web.Response:
        return web.json_response({"window": live.trend_window,
                                  "trends": live.trends_list(arg(request, "trust"))})

    async def alerts(request: web.Request) -> web.Response:
        return web.json_response(live.alerts())

    async def pressure(request: web.Request) -> web.Response:
        return web.json_response({"pressure": live.pressure()})

    def health_doc() -> dict:
        doc = live.health()
        if alertmanager is not None:
            s = alertmanager.stats()
            doc["alertmanager"] = {"queued": s.queued, "sent": s.sent, "overflow": s.overflow,
                                   "failed_attempts": s.failed_attempts, "up": s.up}
        return doc

    async def health(request: web.Request) -> web.Response:
        return web.json_response(health_doc())

    async def snapshot(request: web.Request) -> web.Response:
        return web.json_response({
            "windows": live.windows(), "stats": live.stats_list(), "totals": live.totals_list(),
            "trends": live.trends_list(), "trend_window": live.trend_window,
            "targets": targets_dict(), "timezone": live.timezone, "alerts": live.alerts(),
            "pressure": live.pressure(), "health": health_doc()})

    async def metrics(request: web.Request) -> web.Response:
        body, content_type = render(registry, request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    def stream(kinds: frozenset):
        async def handler(request: web.Request) -> web.StreamResponse:
            return await _sse(request, live, kinds, heartbeat_s)
        return handler

    app.middlewares.append(guard)
    app.on_response_prepare.append(headers)
    app.on_shutdown.append(lambda _app: _close(live))
    router = app.router
    router.add_get("/api/stats", stats)
    router.add_get("/api/trends", trends)
    router.add_get("/api/alerts", alerts)
    router.add_get("/api/pressure", pressure)
    router.add_get("/api/health", health)
    router.add_get("/api/snapshot", snapshot)
    router.add_get("/metrics", metrics)
    for path, kinds in STREAMS.items():
        router.add_get(path, stream(kinds))


async def _close(live: LiveView) -> None:
    live.close()   # ends open streams so shutdown does not wait for them


async def _sse(request: web.Request, live: LiveView, kinds: frozenset,
               heartbeat_s: float) -> web.StreamResponse:
    """A Server-Sent Events stream: a snapshot, then updates; a fresh snapshot after drops."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-store", "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    sub = live.subscribe(kinds)
    try:
        await resp.write(b"retry: 2000\n\n" + live.snapshot_frame(kinds))
        while True:
            got = await sub.next(heartbeat_s)
            if got is None:
                break
            frames, lost = got
            if lost:
                await resp.write(live.snapshot_frame(kinds))
            elif frames:
                await resp.write(b"".join(frames))
            else:
                await resp.write(b": keep-alive\n\n")
    except ConnectionResetError:
        pass   # the browser went away
    finally:
        live.unsubscribe(sub)
    return resp


def create_app(live: LiveView, security: WebSecurity | None = None, alertmanager=None,
               heartbeat_s: float = HEARTBEAT_S) -> web.Application:
    """A bare aiohttp app serving only the feed (tests; a viewer without Faust)."""
    app = web.Application()
    mount(app, live, security or WebSecurity(), alertmanager, heartbeat_s)
    return app
