"""What Flower sees: task events from real workers on RabbitMQ, under readable names."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from kombu import Connection

from shop.celery import app
from shop.orders.workflow.table import TaskName
from tests.fixtures.api import order_body
from tests.fixtures.stack import Stack, wait_terminal, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.rabbitmq]

STEPS = {TaskName.CHECK_INVENTORY, TaskName.CHARGE_PAYMENT, TaskName.RESERVE_STOCK,
         TaskName.CAPTURE_PAYMENT, TaskName.SEND_CONFIRMATION, TaskName.REQUEST_FULFILLMENT}


def test_flower_starts_from_the_ops_extra() -> None:
    done = subprocess.run([sys.executable, "-m", "celery", "-A", "shop", "flower", "--help"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "Web based tool for monitoring and administrating Celery clusters" in done.stdout


def test_every_step_of_an_order_is_an_event_flower_shows_by_its_name(
        dummy_stack: Stack, vhost_url: str) -> None:
    from shop.api import create_app

    events: list[dict[str, Any]] = []
    with Connection(vhost_url) as conn:
        receiver = app.events.Receiver(conn, handlers={"*": events.append})
        listening = threading.Thread(target=receiver.capture, kwargs={"wakeup": False},
                                     daemon=True)
        listening.start()  # Flower's own way of listening: a queue bound to celeryev
        try:
            ping = app.events.Dispatcher(conn, enabled=True)
            wait_until(lambda: ping.send("shop-test-ping") or any(
                e["type"] == "shop-test-ping" for e in list(events)), timeout=30,
                what="the event receiver to listen", interval=0.5)
            dummy_stack.start_worker("w1")
            dummy_stack.start_relay()
            with TestClient(create_app()) as client:
                response = client.post("/v1/orders", json=order_body(),
                                       headers={"Idempotency-Key": str(uuid.uuid4())})
            order_id = response.json()["id"]
            assert wait_terminal(dummy_stack, [order_id]) == {order_id: "confirmed"}

            wait_until(lambda: succeeded(list(events)) >= STEPS, timeout=30,
                       stack=dummy_stack, what="task events for every step")
        finally:
            receiver.should_stop = True
            listening.join(timeout=10)
    sent = {e["name"] for e in events if e["type"] == "task-sent"}
    assert sent >= STEPS  # the API and the workers announce what they publish
    assert {e["hostname"].split("@")[0] for e in events if e["type"] == "task-started"} == {
        "w1"}


def succeeded(events: list[dict[str, Any]]) -> set[str]:
    """Names of the tasks that succeeded (the name travels on ``task-received``)."""
    names = {e["uuid"]: e["name"] for e in events if e["type"] == "task-received"}
    return {names.get(e["uuid"], "") for e in events if e["type"] == "task-succeeded"}
