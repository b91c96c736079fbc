"""Workers stopped the way systemd (``KillMode=mixed``) and ``docker stop`` stop them:
SIGTERM to the worker's main process only. Celery's warm shutdown stops taking messages
and finishes the tasks in hand; whatever it did not start stays in RabbitMQ
(``acks_late``) for the next worker. Real workers, RabbitMQ, PostgreSQL, an SMTP server
and the dummy payment provider with a little latency, so that payment calls are in
flight when the signal comes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from shop.db import session_scope
from shop.orders.models import Order
from shop.payments.faults import read_state, write_rules
from shop.payments.models import Payment
from tests.fixtures.api import order_body
from tests.fixtures.stack import Stack, group_alive, statuses, wait_terminal, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.rabbitmq]

ORDERS = 40


@pytest.fixture
def api(dummy_stack: Stack) -> Any:
    from shop.api import create_app

    write_rules(Path(dummy_stack.env["SHOP_PAYMENT_FAULTS"]), [])  # count calls, no faults
    with TestClient(create_app()) as client:
        yield client


def provider_calls(stack: Stack) -> dict[str, int]:
    calls: dict[str, int] = read_state(Path(stack.env["SHOP_PAYMENT_FAULTS"]))["calls"]
    return calls


def place(api: TestClient) -> str:
    body = order_body(lines=[{"sku": "NOTE-A5", "quantity": 1}])
    response = api.post("/v1/orders", json=body, headers={"Idempotency-Key": str(uuid.uuid4())})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def terminate_all(stack: Stack, names: tuple[str, ...]) -> list[int]:
    """SIGTERM to every one at once (as stopping the whole deployment does), then their
    exit statuses once each is gone: one stopped after the other would leave the second
    to finish the whole run meanwhile."""
    for name in names:
        stack.procs[name].send_signal(signal.SIGTERM)
    return [terminate(stack, name, signalled=True) for name in names]


def terminate(stack: Stack, name: str, *, within: float = 45, signalled: bool = False) -> int:
    """SIGTERM to the main process only, as systemd and Docker send it; returns its exit
    status once it and every process of its group (the pool) are gone."""
    proc = stack.procs.pop(name)
    if not signalled:
        proc.send_signal(signal.SIGTERM)
    try:
        status = proc.wait(timeout=within)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"{name} did not stop within {within}s of SIGTERM\n"
                             f"{stack.logs()}") from None
    wait_until(lambda: not group_alive(proc.pid), timeout=10, what=f"{name}'s pool to exit",
               stack=stack)
    return status


def confirmed_count(order_ids: list[str]) -> int:
    return sum(s == "confirmed" for s in statuses(order_ids).values())


def test_workers_stopped_mid_run_and_started_again_confirm_every_order_once(
        dummy_stack: Stack, api: TestClient, smtp_server: Any) -> None:
    dummy_stack.env["SHOP_DUMMY_PAYMENT_LATENCY_MS"] = "100"
    for name in ("w1", "w2"):
        dummy_stack.start_worker(name, concurrency=3)
    dummy_stack.start_relay()
    t0 = time.monotonic()
    order_ids = [place(api) for _ in range(ORDERS)]

    wait_until(lambda: confirmed_count(order_ids) >= 3, timeout=60, stack=dummy_stack,
               what="the run to be under way")
    assert terminate_all(dummy_stack, ("w1", "w2")) == [0, 0]
    stopped_at = statuses(order_ids)
    assert sum(s == "confirmed" for s in stopped_at.values()) < ORDERS  # truly mid-run
    for name in ("w1", "w2"):
        assert "Warm shutdown" in (dummy_stack.log_dir / f"{name}.log").read_text()

    print(f"stopped after {time.monotonic() - t0:.1f}s with {Counter(stopped_at.values())}")
    for name in ("w3", "w4"):
        dummy_stack.start_worker(name, concurrency=3)
    assert wait_terminal(dummy_stack, order_ids, timeout=90) == dict.fromkeys(order_ids,
                                                                               "confirmed")
    smtp_server.wait_for(ORDERS, timeout=30)
    time.sleep(1)  # a duplicate would arrive now
    emails = Counter(oid for m in smtp_server.messages for oid in order_ids
                     if oid in m.as_string())
    assert emails == dict.fromkeys(order_ids, 1)

    with session_scope() as session:
        totals = {oid: total for oid, total in session.execute(select(Order.id, Order.total)
                  .where(Order.id.in_([uuid.UUID(i) for i in order_ids])))}
        captured = session.execute(select(Payment.order_id, Payment.amount_captured).where(
            Payment.order_id.in_(totals), Payment.amount_captured > 0)).all()
    assert sorted(str(order_id) for order_id, _ in captured) == sorted(order_ids)
    assert all(amount == totals[order_id] for order_id, amount in captured)
    intents = [json.loads(p.read_text()) for p in
               (Path(dummy_stack.env["SHOP_DATA_DIR"]) / "dummy_payments").glob("pi_*.json")]
    received = Counter(i["metadata"]["order_id"] for i in intents if i["amount_received"])
    assert received == dict.fromkeys(order_ids, 1)
    assert provider_calls(dummy_stack)["capture"] == ORDERS  # no capture was asked twice


def test_a_worker_finishes_the_payment_call_in_hand_before_it_exits_on_sigterm(
        dummy_stack: Stack, api: TestClient) -> None:
    dummy_stack.env["SHOP_DUMMY_PAYMENT_LATENCY_MS"] = "3000"
    dummy_stack.start_worker("w1", concurrency=1)
    dummy_stack.start_relay()
    order_id = place(api)
    wait_until(lambda: provider_calls(dummy_stack).get("create_intent"), timeout=60,
               stack=dummy_stack, what="the authorization to be in flight")

    started = time.monotonic()
    assert terminate(dummy_stack, "w1") == 0
    assert time.monotonic() - started > 1  # it waited for the call rather than dropping it
    with session_scope() as session:
        order = session.get(Order, uuid.UUID(order_id))
        assert order is not None
        assert (order.status, order.stage) == ("pending", "authorized")  # the step committed

    dummy_stack.env["SHOP_DUMMY_PAYMENT_LATENCY_MS"] = "0"
    dummy_stack.start_worker("w2")
    assert wait_terminal(dummy_stack, [order_id], timeout=60) == {order_id: "confirmed"}
    calls = provider_calls(dummy_stack)
    assert (calls["create_intent"], calls["capture"]) == (1, 1)  # nothing ran twice
