"""Every provider call a span (``shop.tracing``), inside the step that makes it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from opentelemetry.trace import SpanKind

from shop import tracing
from shop.payments.wrapped import WrappedGateway

T = TypeVar("T")


class TracedGateway(WrappedGateway):
    def around(self, op: str, call: Callable[[], T], key: str | None = None) -> T:
        with tracing.span(f"payments.{op}", kind=SpanKind.CLIENT,
                          **{"shop.provider": self.name, "shop.provider.operation": op}):
            return call()
