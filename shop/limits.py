"""An ASGI guard that refuses bodies over a size before anything parses them."""

from __future__ import annotations

import json
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
