"""``shop.tracing`` with tracing off (the default): the API and the worker's app load
without the OpenTelemetry SDK, and the outbox rows carry no trace context."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from pydantic import ValidationError

from shop import tracing
from shop.config import Settings

OFF = """
import os, sys
os.environ.pop("SHOP_TRACING", None)
import shop.api, shop.celery
from shop import tracing
from shop.config import get_settings
tracing.configure(get_settings(), "check")
loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk",
                "opentelemetry.exporter", "shop.tracing.sdk")))
assert loaded == [], loaded
assert tracing.traceparent() is None
print("ok")
"""


def test_tracing_off_loads_no_sdk_and_writes_no_traceparent() -> None:
    done = subprocess.run([sys.executable, "-c", OFF], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("ok")


def test_a_traceparent_round_trips_into_a_parent_context() -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    context = tracing.context_from(parent)
    assert context is not None
    span = tracing.trace.get_current_span(context).get_span_context()
    assert (f"{span.trace_id:032x}", f"{span.span_id:016x}") == (
        "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    assert tracing.context_from(None) is None
    assert tracing.message_headers(parent) == {"traceparent": parent}
    assert tracing.message_headers(None) == {}


@pytest.mark.parametrize("mode", ["off", "otlp", "console", "file:/tmp/spans.jsonl"])
def test_the_tracing_setting_takes_its_modes(mode: str) -> None:
    assert Settings(tracing=mode).tracing == mode


@pytest.mark.parametrize("mode", ["on", "file:", "jaeger"])
def test_the_tracing_setting_refuses_others(mode: str) -> None:
    with pytest.raises(ValidationError):
        Settings(tracing=mode)


ON = """
from shop import tracing
from shop.config import get_settings
tracing.configure(get_settings(), "check")
with tracing.span("outer"):
    assert tracing.traceparent() is not None
"""


def test_otlp_sends_spans_to_the_standard_endpoint_variable() -> None:
    received: list[tuple[str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append((self.path, body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "SHOP_TRACING": "otlp",
               "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_port}"}
        done = subprocess.run([sys.executable, "-c", ON], capture_output=True, text=True,
                              timeout=120, check=False, env=env)
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stderr
    assert [path for path, _ in received] == ["/v1/traces"]
    assert b"outer" in received[0][1]
    assert b"check" in received[0][1]  # service.name
