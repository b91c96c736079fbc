"""A burst of orders against a paced provider: never over the rate, every order confirmed."""

from __future__ import annotations

import bisect
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shop.payments.faults import read_state, write_rules
from tests.fixtures.api import order_body
from tests.fixtures.stack import Stack, wait_terminal

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.rabbitmq]
RATE = 10.0


def most_in_a_second(times: list[float]) -> int:
    """The most calls in any window [t, t + 1 s)."""
    times = sorted(times)
    return max(bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times))


def test_a_burst_of_orders_never_exceeds_the_providers_rate_and_all_confirm(
        dummy_stack: Stack) -> None:
    from shop.api import create_app

    faults = Path(dummy_stack.env["SHOP_PAYMENT_FAULTS"])
    write_rules(faults, [], record=True)
    dummy_stack.env.update({"SHOP_STRIPE_MAX_RPS": str(RATE)})  # one budget, shared
    dummy_stack.start_worker("w1", concurrency=2)  # two processes share the rate
    dummy_stack.start_relay()
    with TestClient(create_app()) as api:
        order_ids: list[Any] = [
            api.post("/v1/orders", json=order_body(lines=[{"sku": "NOTE-A5", "quantity": 1}]),
                     headers={"Idempotency-Key": str(uuid.uuid4())}).json()["id"]
            for _ in range(12)]
    assert set(wait_terminal(dummy_stack, order_ids, timeout=120).values()) == {"confirmed"}
    log = read_state(faults)["log"]
    assert len(log) >= 12 * 2  # create-and-confirm, capture per order (issue 19; was 5)
    assert most_in_a_second([at for _, at in log]) <= RATE
