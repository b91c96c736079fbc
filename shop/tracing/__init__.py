"""Tracing (OpenTelemetry): one checkout is one trace, across the queue.

``SHOP_TRACING`` chooses it: ``off`` (the default), ``otlp`` (OTLP over HTTP to
``OTEL_EXPORTER_OTLP_ENDPOINT``, or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), ``console``
(spans on stdout) or ``file:<path>`` (one JSON object per span, appended to ``path`` by
every process). The SDK and its exporters (the ``tracing`` extra) are imported only when
it is on (``shop.tracing.sdk``); when it is off this module touches only the
OpenTelemetry API, whose tracer makes no-op spans.

What makes spans:

- the API: FastAPI's own telemetry (``fastapi.telemetry``, on once a tracer provider is
  set) makes one server span per HTTP request (method, route, status; the caller's
  ``traceparent`` header parents it) and spans for its endpoint; the shop adds the
  request id (``shop.api.RequestIds``);
- every Celery task: a consumer span named after the task (task name, order id), whose
  parent is the span that wrote the task's outbox row (``task_started``/``task_finished``);
- every payment provider call (``shop.payments.traced``) and every email send
  (``span``), inside the step that makes them.

The trace context crosses the queue in W3C ``traceparent`` form: the outbox row keeps
the one current when it was written (``OutboxMessage.traceparent``), the message
carries it as a ``traceparent`` header, whoever publishes it (the committer or the
relay), and the worker makes it the task span's parent.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import Token
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shop.config import Settings

TRACER = "shop"
HEADER = "traceparent"
_propagator = TraceContextTextMapPropagator()
_configured: str | None = None


def enabled(settings: Settings) -> bool:
    return settings.tracing != "off"


def configure(settings: Settings, service: str) -> None:
    """Install the SDK's tracer provider for this process when ``SHOP_TRACING`` asks for
    one (once per process; the first caller's ``service`` names it)."""
    global _configured
    if not enabled(settings) or _configured is not None:
        return
    try:  # the SDK only when tracing is on
        sdk = importlib.import_module("shop.tracing.sdk")
    except ImportError as exc:
        raise RuntimeError(f"SHOP_TRACING={settings.tracing} needs the tracing extra "
                           f"(pip install 'shop[tracing]'): {exc}") from exc
    sdk.install(settings.tracing, service)
    _configured = service


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER)


def traceparent() -> str | None:
    """The current span's context as a W3C ``traceparent``; None outside any recorded
    span (tracing off, or nothing traced here)."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get(HEADER)


def context_from(parent: str | None) -> otel_context.Context | None:
    """The context a ``traceparent`` names, to parent spans on; None without one."""
    if not parent:
        return None
    return _propagator.extract({HEADER: parent})


@contextmanager
def span(name: str, *, kind: SpanKind = SpanKind.INTERNAL,
         **attributes: str | int | None) -> Iterator[Span]:
    """A span around the block, a child of the current one; records an escaping error."""
    with tracer().start_as_current_span(name, kind=kind, attributes={
            key: value for key, value in attributes.items() if value is not None}) as current:
        yield current


def annotate(**attributes: str) -> None:
    """Add ``attributes`` to the current span (none when tracing is off: a no-op)."""
    trace.get_current_span().set_attributes(attributes)


_running: dict[str, tuple[Span, Token[otel_context.Context]]] = {}


def task_started(task_id: str, task_name: str, parent: str | None,
                 order_id: str | None) -> None:
    """Open the task's span, parented by the ``traceparent`` its message carried, and
    make it current until ``task_finished`` (Celery's prerun and postrun signals)."""
    if _configured is None:
        return
    current = tracer().start_span(task_name, context=context_from(parent),
                                  kind=SpanKind.CONSUMER, attributes={
                                      "shop.task": task_name, "messaging.message.id": task_id,
                                      **({"shop.order_id": order_id} if order_id else {})})
    token = otel_context.attach(trace.set_span_in_context(current))
    _running[task_id] = (current, token)


def task_finished(task_id: str, state: str | None) -> None:
    running = _running.pop(task_id, None)
    if running is None:
        return
    current, token = running
    current.set_attribute("shop.task_state", state or "")
    if state == "FAILURE":
        current.set_status(Status(StatusCode.ERROR))
    otel_context.detach(token)
    current.end()


def message_headers(parent: str | None) -> dict[str, Any]:
    """The header a message carries its outbox row's trace context in."""
    return {HEADER: parent} if parent else {}
