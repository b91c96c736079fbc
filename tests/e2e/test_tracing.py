"""Tracing end to end (``shop.tracing``): one checkout is one trace across the API, the
queue and the workers. Every process appends its spans to one JSON-lines file
(``SHOP_TRACING=file:<path>``); the API runs under uvicorn, the worker and the relay as
the stack's subprocesses, so this test process configures no tracer of its own."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from shop.orders.workflow.table import TaskName
from tests.fixtures.api import order_body
from tests.fixtures.ports import free_port
from tests.fixtures.stack import Stack, wait_terminal, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.rabbitmq]

STEPS = [TaskName.CHECK_INVENTORY, TaskName.CHARGE_PAYMENT, TaskName.RESERVE_STOCK,
         TaskName.CAPTURE_PAYMENT, TaskName.SEND_CONFIRMATION, TaskName.REQUEST_FULFILLMENT]


def read_spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("publish_on_commit", ["true", "false"],
                         ids=["direct-publish", "relay-publish"])
def test_one_checkout_is_one_trace_from_the_request_through_every_step(
        dummy_stack: Stack, tmp_path: Path, publish_on_commit: str) -> None:
    spans_file = tmp_path / "spans.jsonl"
    traced = {"SHOP_TRACING": f"file:{spans_file}", "SHOP_PUBLISH_ON_COMMIT": publish_on_commit}
    dummy_stack.env.update(traced)
    port = free_port()
    dummy_stack.start("api", "-m", "uvicorn", "shop.api:app", "--host", "127.0.0.1",
                      "--port", str(port), "--log-level", "warning")
    dummy_stack.start_worker("worker")
    dummy_stack.start_relay()
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _answers(base), timeout=30, what="the API to start", stack=dummy_stack)

    placed = httpx.post(f"{base}/v1/orders", json=order_body(), timeout=10,
                        headers={"Idempotency-Key": str(uuid.uuid4())})
    assert placed.status_code == 202, placed.text
    order_id = str(placed.json()["id"])
    assert wait_terminal(dummy_stack, [order_id]) == {order_id: "confirmed"}

    def whole_trace() -> list[dict[str, Any]] | None:
        spans = read_spans(spans_file)
        http = [s for s in spans if s["attributes"].get("http.route") == "/v1/orders"
                and s["attributes"].get("http.request.method") == "POST"]
        if len(http) != 1:
            return None
        trace = [s for s in spans if s["trace_id"] == http[0]["trace_id"]]
        names = {s["name"] for s in trace}
        return trace if {*STEPS, "email.send"} <= names else None

    trace = wait_until(whole_trace, timeout=30, what="the checkout's spans",
                       stack=dummy_stack, interval=0.5)
    by_id = {s["span_id"]: s for s in trace}
    http = next(s for s in trace if s["kind"] == "SERVER")  # FastAPI's own server span
    assert http["name"] == "POST /v1/orders"
    assert http["parent_span_id"] is None
    assert http["attributes"]["http.response.status_code"] == 202
    assert http["attributes"]["shop.request_id"] == placed.headers["x-request-id"]
    assert http["service"] == "shop-api"

    def parent(span: dict[str, Any]) -> dict[str, Any]:
        assert span["parent_span_id"] in by_id, f"{span['name']}'s parent is not in the trace"
        return by_id[span["parent_span_id"]]

    def step(name: str) -> dict[str, Any]:
        """The run of ``name`` that did the work (a retried copy may precede it)."""
        found = [s for s in trace if s["name"] == name
                 and s["attributes"].get("shop.task_state", "SUCCESS") == "SUCCESS"]
        assert len(found) == 1, (name, found)
        return found[0]

    # Each step is a child of the span that wrote its outbox row, across the queue: the
    # first of the request's (its endpoint, inside the server span), each later one of
    # the step before it.
    first = step(TaskName.CHECK_INVENTORY)
    writer = parent(first)
    assert writer["service"] == "shop-api"
    while writer is not http:
        writer = parent(writer)
        assert writer["service"] == "shop-api"
    for name in STEPS:
        span = step(name)
        assert span["kind"] == "CONSUMER"
        assert span["service"] == "shop-worker"
        assert span["attributes"]["shop.task"] == name
        assert span["attributes"]["shop.order_id"] == order_id
        assert span["pid"] != http["pid"]
        if name != TaskName.CHECK_INVENTORY:
            assert parent(span)["name"] in {s.value for s in STEPS}
    assert parent(step(TaskName.CHARGE_PAYMENT)) is first
    assert parent(step(TaskName.RESERVE_STOCK)) is step(TaskName.CHARGE_PAYMENT)
    assert parent(step(TaskName.CAPTURE_PAYMENT)) is step(TaskName.RESERVE_STOCK)
    assert parent(step(TaskName.SEND_CONFIRMATION)) is step(TaskName.CAPTURE_PAYMENT)
    assert parent(step(TaskName.REQUEST_FULFILLMENT)) is step(TaskName.CAPTURE_PAYMENT)

    # Every provider call sits inside the step that made it; the email inside its step.
    calls = [s for s in trace if s["name"].startswith("payments.")]
    assert calls, [s["name"] for s in trace]
    for call in calls:
        assert call["kind"] == "CLIENT"
        assert call["attributes"]["shop.provider.operation"] == call["name"][len("payments."):]
        assert parent(call)["name"] in (TaskName.CHARGE_PAYMENT, TaskName.CAPTURE_PAYMENT)
    assert {parent(c)["name"] for c in calls} == {TaskName.CHARGE_PAYMENT,
                                                  TaskName.CAPTURE_PAYMENT}
    assert "payments.capture" in {c["name"] for c in calls}
    email = step("email.send")
    assert parent(email) is step(TaskName.SEND_CONFIRMATION)
    assert email["attributes"]["shop.order_id"] == order_id


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/livez", timeout=1).status_code < 500
    except httpx.HTTPError:
        return False
