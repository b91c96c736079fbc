"""ASGI guards: bodies over a size are refused before anything parses them, and one
client's checkouts are paced so a flood degrades into clear 429s, not a crash."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY = 64 * 1024
WEBHOOK_BODY = 512 * 1024  # a provider's event can carry a charge with many refunds


class BodyLimit:
    """Answers 422 (field ``body``) to a request body over ``limit`` bytes.

    ``overrides`` maps path prefixes to their own limits.
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY,
                 overrides: dict[str, int] | None = None) -> None:
        self.app = app
        self.default = limit
        self.overrides = overrides or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        limit = next((size for prefix, size in self.overrides.items()
                      if path.startswith(prefix)), self.default)
        await self._guard(scope, receive, send, limit)

    async def _guard(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send, limit)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._refuse(send, limit)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, limit: int) -> None:
        payload: dict[str, Any] = {
            "error": "validation_failed",
            "message": f"The request body is larger than {limit} bytes",
            "fields": [{"field": "body", "message": f"larger than {limit} bytes",
                        "type": "too_large"}],
        }
        data = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": 422, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": data})


class CheckoutRateLimit:
    """At most ``rate`` checkouts a second from one client (bursts of ``burst``), per API
    process: past that, ``429`` with ``Retry-After`` and the error shape, before any
    work is done. Nothing is lost: a refused checkout wrote nothing, and the client
    retries it with the same Idempotency-Key.

    The client is the peer address, or the first ``X-Forwarded-For`` address when
    ``trust_forwarded`` is on (only behind a proxy that sets it). Each API replica
    counts on its own; a limit across replicas belongs in the load balancer.
    """

    PATH, METHOD = "/v1/orders", "POST"
    MAX_CLIENTS = 10_000

    def __init__(self, app: ASGIApp, rate: float = 50.0, burst: float = 100.0,
                 trust_forwarded: bool = False) -> None:
        self.app = app
        self.rate, self.burst = rate, burst
        self.trust_forwarded = trust_forwarded
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope.get("method") == self.METHOD
                and scope.get("path") == self.PATH):
            wait = self._take(self._client(scope))
            if wait > 0:
                await _refuse_busy(send, wait)
                return
        await self.app(scope, receive, send)

    def _client(self, scope: Scope) -> str:
        if self.trust_forwarded:
            forwarded: bytes = dict(scope.get("headers") or []).get(b"x-forwarded-for", b"")
            first = forwarded.decode("latin-1").split(",")[0].strip()
            if first:
                return first
        peer = scope.get("client")
        return str(peer[0]) if peer else "unknown"

    def _take(self, client: str) -> float:
        """Spend one token of ``client``'s bucket: 0, or the seconds until one is due."""
        now = time.monotonic()
        with self._lock:
            tokens, then = self._buckets.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            self._buckets[client] = (tokens - 1 if wait == 0 else tokens, now)
            while len(self._buckets) > self.MAX_CLIENTS:
                self._buckets.popitem(last=False)
        return wait


async def _refuse_busy(send: Send, wait: float) -> None:
    retry_after = max(1, int(wait + 0.999))
    payload = {"error": "rate_limited",
               "message": f"Too many checkouts from this client; retry in {retry_after} s "
                          "with the same Idempotency-Key", "fields": []}
    data = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": 429, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
        (b"retry-after", str(retry_after).encode())]})
    await send({"type": "http.response.body", "body": data})
