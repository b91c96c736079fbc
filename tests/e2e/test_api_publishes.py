"""The API publishes a new order's first step itself, right after the commit: the wiring
is explicit (``create_app`` installs the publisher), not a side effect of an import."""

from __future__ import annotations

import time

import httpx
from kombu.connection import Connection

from shop.config import get_settings
from shop.messaging.broker import task_queues
from tests.fixtures.api import order_body
from tests.fixtures.ports import free_port
from tests.fixtures.stack import Stack, wait_until


def test_uvicorn_with_no_relay_publishes_a_new_orders_first_step_within_a_second(
        dummy_stack: Stack) -> None:
    broker = dummy_stack.env["SHOP_BROKER_URL"]
    with Connection(broker) as conn:  # the queues a worker would declare; none runs here
        for queue in task_queues(get_settings()):
            queue(conn.default_channel).declare()
    port = free_port()
    dummy_stack.start("api", "-m", "uvicorn", "shop.api:app", "--host", "127.0.0.1",
                      "--port", str(port), "--log-level", "warning")
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _answers(base), timeout=30, what="the API to start", stack=dummy_stack)
    assert "relay" not in dummy_stack.procs
    assert not any("worker" in n for n in dummy_stack.procs)

    placed = httpx.post(f"{base}/v1/orders", json=order_body(), timeout=10)
    accepted = time.monotonic()
    assert placed.status_code == 202, placed.text
    with Connection(broker) as conn:
        channel = conn.channel()
        message = None
        while message is None and time.monotonic() - accepted < 1.0:
            message = channel.basic_get("intake", no_ack=True)
            if message is None:
                time.sleep(0.02)
    took = time.monotonic() - accepted
    assert message is not None, f"no message within a second\n{dummy_stack.logs()}"
    assert message.properties["application_headers"]["task"] == "shop.orders.check_inventory"
    assert placed.json()["id"] in str(message.body)
    assert took < 1.0


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/livez", timeout=1).status_code < 500
    except httpx.HTTPError:
        return False
