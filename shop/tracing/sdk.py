"""The OpenTelemetry SDK's side of ``shop.tracing``: imported only when tracing is on
(the ``tracing`` extra: ``opentelemetry-sdk``, ``opentelemetry-exporter-otlp-proto-http``).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)


class JsonLinesExporter(SpanExporter):
    """Appends one JSON object per span to a file that several processes share (each
    line is one ``write`` in append mode, opened per batch, so forks need no care)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(as_dict(span), separators=(",", ":")) + "\n"
                        for span in spans)
        try:
            with self._lock, self.path.open("a", encoding="utf-8") as out:
                out.write(lines)
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def as_dict(span: ReadableSpan) -> dict[str, Any]:
    context, parent = span.get_span_context(), span.parent
    return {
        "name": span.name, "kind": span.kind.name,
        "trace_id": f"{context.trace_id:032x}" if context else None,
        "span_id": f"{context.span_id:016x}" if context else None,
        "parent_span_id": f"{parent.span_id:016x}" if parent else None,
        "start": span.start_time, "end": span.end_time, "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "service": span.resource.attributes.get("service.name"), "pid": os.getpid(),
    }


def install(mode: str, service: str) -> None:
    """Set this process's tracer provider: ``otlp``, ``console`` or ``file:<path>``."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if mode == "otlp":  # the endpoint from OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif mode == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif mode.startswith("file:"):
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(Path(mode[5:]))))
    else:
        raise ValueError(f"unknown SHOP_TRACING {mode!r}")
    trace.set_tracer_provider(provider)
