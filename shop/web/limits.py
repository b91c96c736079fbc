"""ASGI guards: bodies over a size are refused before anything parses them, and one
client's checkouts are paced so a flood degrades into clear 429s, not a crash."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY = 64 * 1024
WEBHOOK_BODY = 512 * 1024  # a provider's event can carry a charge with many refunds

Bucket = tuple[float, float]  # a client's tokens, and when they were counted


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

    Who the client is: the peer address, or with ``trust_forwarded`` (only behind proxies
    that append to ``X-Forwarded-For``) the address the outermost trusted proxy saw. Each
    proxy appends the address it was called from, so only the right-most entries are
    written by proxies; anything to their left came from the client and may be forged.
    With ``trusted_hops`` proxies in front of the API the client is the ``trusted_hops``-th
    entry from the right; a header with fewer entries did not pass them all, and counts as
    the peer. Each API replica counts on its own; a limit across replicas belongs in the
    load balancer.

    At most ``max_clients`` buckets are kept. A bucket that has refilled to ``burst`` is
    the same as no bucket, so those are forgotten (from the least recently used end: the
    first bucket there refills at the latest ``burst / rate`` seconds after its last use).
    Buckets still refilling are never dropped: dropping a limited client's bucket would
    hand it a fresh burst. While the table is full of them, new clients share one bucket
    of the same rate and burst, so a flood of addresses slows newcomers down during the
    flood but resets nobody's limit.
    """

    PATH, METHOD = "/v1/orders", "POST"
    MAX_CLIENTS = 10_000

    def __init__(self, app: ASGIApp, *, rate: float = 50.0, burst: float = 100.0,
                 trust_forwarded: bool = False, trusted_hops: int = 1,
                 max_clients: int = MAX_CLIENTS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if trusted_hops < 1:
            raise ValueError("trusted_hops must be at least 1")
        self.app = app
        self.rate, self.burst = rate, burst
        self.trust_forwarded, self.trusted_hops = trust_forwarded, trusted_hops
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, Bucket] = OrderedDict()
        self._shared: Bucket = (burst, clock())
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
            entries = forwarded_for(scope)
            if len(entries) >= self.trusted_hops:
                return entries[-self.trusted_hops]
        peer = scope.get("client")
        return str(peer[0]) if peer else "unknown"

    def _take(self, client: str) -> float:
        """Spend one token of ``client``'s bucket: 0, or the seconds until one is due."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.pop(client, None)
            if bucket is None:
                self._forget_refilled(now)
                if len(self._buckets) >= self.max_clients:
                    self._shared, wait = self._spend(self._shared, now)
                    return wait
                bucket = (self.burst, now)
            self._buckets[client], wait = self._spend(bucket, now)
        return wait

    def _spend(self, bucket: Bucket, now: float) -> tuple[Bucket, float]:
        """``bucket`` refilled to ``now`` less one token, and 0; or unspent, and the wait."""
        tokens, then = bucket
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens >= 1:
            return (tokens - 1, now), 0.0
        return (tokens, now), (1 - tokens) / self.rate

    def _forget_refilled(self, now: float) -> None:
        """Drop the least recently used buckets that have refilled (caller holds the lock)."""
        while self._buckets:
            client, (tokens, then) = next(iter(self._buckets.items()))
            if tokens + (now - then) * self.rate < self.burst:
                return
            del self._buckets[client]


def forwarded_for(scope: Scope) -> list[str]:
    """The non-empty ``X-Forwarded-For`` entries, left to right, over every header line."""
    lines = [value.decode("latin-1") for name, value in scope.get("headers") or []
             if name.lower() == b"x-forwarded-for"]
    return [entry.strip() for entry in ",".join(lines).split(",") if entry.strip()]


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
