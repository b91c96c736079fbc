"""Request rate, errors and latency of the API by route, for Prometheus.

Each request counts once in ``shop_http_requests_total{method, route, status}`` and
once in ``shop_http_request_duration_seconds{method, route}``. ``route`` is the route's
template (``/v1/orders/{order_id}``), never the raw path, so a label's values stay few;
a path that matches no route is ``unmatched``, a method outside HTTP's usual ones
``OTHER``. A request that raises counts as a 500 (Starlette's error middleware, outside
this one, answers it so).
"""

from __future__ import annotations

import time

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shop import metrics

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


class HttpMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            route = route_template(scope)
            metrics.HTTP_REQUESTS.labels(method=method, route=route, status=str(status)).inc()
            metrics.HTTP_SECONDS.labels(method=method, route=route).observe(
                time.perf_counter() - started)


def route_template(scope: Scope) -> str:
    """The template of the route that answered (or would have: a request refused before
    routing, by the rate limit or the body limit, is matched here), else ``unmatched``."""
    route = scope.get("route")
    if isinstance(route, BaseRoute) and isinstance(getattr(route, "path", None), str):
        return str(route.path)  # type: ignore[attr-defined]
    app = scope.get("app")
    for candidate in getattr(getattr(app, "router", None), "routes", []):
        match, _ = candidate.matches(scope)
        if match is not Match.NONE and isinstance(getattr(candidate, "path", None), str):
            return str(candidate.path)
    return UNMATCHED
