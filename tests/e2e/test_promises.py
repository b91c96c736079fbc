"""The promise at its edges, against real workers on RabbitMQ and PostgreSQL: lost
answers, refusals, time limits, lost emails and warehouse requests. Faults are injected
at the payment gateway boundary (``shop.payments.faults``) or come from localstripe."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import amqp.exceptions
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from shop.config import get_settings
from shop.db import session_scope
from shop.notifications.models import Notification
from shop.orders import attention
from shop.orders.models import Order, Product
from shop.orders.workflow import sweeper
from shop.payments.faults import read_state, write_rules
from tests.fixtures.api import order_body
from tests.fixtures.localstripe import intents_for_order
from tests.fixtures.stack import Stack, drain, drain_raw, wait_terminal, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.rabbitmq]


@pytest.fixture
def api(dummy_stack: Stack) -> Any:
    from shop.api import create_app

    with TestClient(create_app()) as client:
        yield client


def faults(stack: Stack) -> Path:
    return Path(stack.env["SHOP_PAYMENT_FAULTS"])


def dummy_intents(stack: Stack, order_id: str) -> list[dict[str, Any]]:
    root = Path(stack.env["SHOP_DATA_DIR"]) / "dummy_payments"
    intents = [json.loads(p.read_text()) for p in root.glob("pi_dummy_*.json")]
    return [i for i in intents if i["metadata"].get("order_id") == order_id]


def place(api: TestClient, **overrides: Any) -> str:
    response = api.post("/v1/orders", json=order_body(**overrides),
                        headers={"Idempotency-Key": str(uuid.uuid4())})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def order_row(order_id: str) -> Order:
    with session_scope() as session:
        order = session.get(Order, uuid.UUID(order_id))
        assert order is not None
        session.expunge(order)
        return order


def flags(order_id: str) -> set[str]:
    with session_scope() as session:
        return {a.kind for a in attention.open_items(session, order_id=uuid.UUID(order_id))}


def reserved(sku: str) -> int:
    with session_scope() as session:
        return int(session.scalar(select(Product.reserved).where(Product.sku == sku)) or 0)


def take_all(broker: str, queue: str) -> list[Any]:
    """Every message in ``queue``, removed; none while the queue does not exist yet."""
    try:
        return drain_raw(broker, queue)
    except amqp.exceptions.NotFound:
        return []


def shop_cli(stack: Stack, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "shop.cli", *args], env=stack.env,
                          capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


def test_a_capture_whose_answer_is_lost_is_confirmed_once_the_provider_answers(
        dummy_stack: Stack, api: TestClient, smtp_server: Any) -> None:
    # The capture's answer is lost, then the provider stops answering anything: the
    # step's retries (the same capture, whose key would replay the answer) fail too.
    write_rules(faults(dummy_stack), [
        {"op": "capture", "mode": "lost_answer", "times": 1},
        {"op": "*", "mode": "unavailable", "times": None, "after": "capture"},
    ])
    dummy_stack.start_worker("w1")
    dummy_stack.start_relay()
    order_id = place(api)
    wait_until(lambda: "payment_unknown" in flags(order_id), timeout=90, stack=dummy_stack,
               what="the capture to be handed to reconciliation")
    held = order_row(order_id)
    assert (held.status, held.stage) == ("pending", "reserved")  # never failed
    assert reserved("MUG-BLUE") == 2  # and its stock is not sold again
    [intent] = dummy_intents(dummy_stack, order_id)
    assert intent["status"] == "succeeded"  # the money was taken all along

    print(shop_cli(dummy_stack, "reconcile"))  # the provider still does not answer
    assert order_row(order_id).stage == "reserved"
    write_rules(faults(dummy_stack), [])  # it comes back
    assert "capture_settled: 1" in shop_cli(dummy_stack, "reconcile")
    assert wait_terminal(dummy_stack, [order_id]) == {order_id: "confirmed"}
    smtp_server.wait_for(1, timeout=30)
    assert read_state(faults(dummy_stack))["calls"].get("capture") is None  # no 2nd capture
    [intent] = dummy_intents(dummy_stack, order_id)
    assert (intent["status"], intent["amount_received"]) == ("succeeded", order_row(
        order_id).total)
    assert flags(order_id) == set()


def test_a_provider_refusal_fails_the_order_once_with_a_customer_safe_reason(
        dummy_stack: Stack, api: TestClient) -> None:
    write_rules(faults(dummy_stack), [{"op": "create_intent", "mode": "reject", "times": None}])
    dummy_stack.start_worker("w1")
    dummy_stack.start_relay()
    order_id = place(api)
    assert wait_terminal(dummy_stack, [order_id]) == {order_id: "failed"}
    seen = api.get(f"/v1/orders/{order_id}").json()
    assert (seen["failure"]["step"], seen["failure"]["reason"]) == ("payment",
                                                                    "payment_rejected")
    assert "injected" not in json.dumps(seen)  # the provider's words stay internal
    time.sleep(2)
    assert read_state(faults(dummy_stack))["calls"]["create_intent"] == 1  # no spinning


def test_a_revoked_api_key_is_an_outage_not_a_customer_refusal_and_never_spins(
        dummy_stack: Stack, api: TestClient) -> None:
    write_rules(faults(dummy_stack), [{"op": "*", "mode": "auth", "times": None}])
    dummy_stack.start_worker("w1")
    dummy_stack.start_relay()
    order_id = place(api)
    assert wait_terminal(dummy_stack, [order_id]) == {order_id: "failed"}
    order = order_row(order_id)
    assert (order.failure_step, order.failure_reason) == ("payment", "payment_unavailable")
    calls = read_state(faults(dummy_stack))["calls"]["create_intent"]
    assert calls == 2  # SHOP_RETRY_MAX_ATTEMPTS, then it stops
    with session_scope() as session:
        assert sweeper.resume_stuck(session, older_than=0) == 0
    time.sleep(2)
    assert read_state(faults(dummy_stack))["calls"]["create_intent"] == calls


def test_a_payment_call_stopped_by_its_time_limit_is_retried_not_lost(
        dummy_stack: Stack, api: TestClient) -> None:
    write_rules(faults(dummy_stack), [
        {"op": "create_intent", "mode": "hang", "seconds": 120, "times": 1}])
    dummy_stack.start_worker("w1")
    dummy_stack.start_relay()
    started = time.monotonic()
    order_id = place(api)
    assert wait_terminal(dummy_stack, [order_id], timeout=120) == {order_id: "confirmed"}
    assert time.monotonic() - started < get_settings().stuck_after_seconds  # not the sweeper
    assert read_state(faults(dummy_stack))["calls"]["create_intent"] == 2
    assert "workflow.resumed" not in {e["type"] for e in
                                      api.get(f"/v1/orders/{order_id}").json()["events"]}


def test_a_lost_confirmation_email_is_re_driven_and_sent_once(
        dummy_stack: Stack, api: TestClient, smtp_server: Any, vhost_url: str) -> None:
    dummy_stack.start("w-no-mail", "-m", "celery", "-A", "shop", "worker", "-l", "info",
                      "-n", "nomail@%h", "-c", "2", "-Q", "orders,payments",
                      "--without-gossip", "--without-mingle")
    dummy_stack.start_relay()
    order_id = place(api)
    assert wait_terminal(dummy_stack, [order_id]) == {order_id: "confirmed"}
    wait_until(lambda: take_all(vhost_url, "notifications"), timeout=30, stack=dummy_stack,
               what="the confirmation message, to lose it")  # the message is lost
    with session_scope() as session:
        assert sweeper.resume_stuck(session, older_than=0) == 1
    dummy_stack.start_worker("w-all")
    smtp_server.wait_for(1, timeout=60)
    time.sleep(2)
    assert len([m for m in smtp_server.messages if order_id in m.as_string()]) == 1


def test_a_mailbox_that_refuses_for_good_is_flagged_not_retried_forever(
        dummy_stack: Stack, api: TestClient, smtp_server: Any) -> None:
    smtp_server.refuse("gone@example.com")
    dummy_stack.start_worker("w1")
    dummy_stack.start_relay()
    order_id = place(api, email="gone@example.com")
    assert wait_terminal(dummy_stack, [order_id]) == {order_id: "confirmed"}
    wait_until(lambda: "email_failed" in flags(order_id), timeout=60, stack=dummy_stack,
               what="the refused email to be flagged")
    with session_scope() as session:
        notification = session.scalar(select(Notification).where(
            Notification.order_id == uuid.UUID(order_id)))
        assert notification is not None
        assert (notification.attempts, "550" in (notification.last_error or "")) == (1, True)


def test_a_warehouse_request_is_kept_even_before_the_warehouse_binds_a_queue(
        dummy_stack: Stack, api: TestClient, vhost_url: str) -> None:
    dummy_stack.start_worker("w1")
    dummy_stack.start_relay()
    order_id = place(api)
    assert wait_terminal(dummy_stack, [order_id]) == {order_id: "confirmed"}
    messages = wait_until(lambda: drain(vhost_url, "shop.fulfillment"), timeout=30,
                          stack=dummy_stack, what="the fulfillment request")
    assert [m.payload["order_id"] for m in messages] == [order_id]


def test_an_unknown_payment_method_is_a_refusal_at_stripe_not_an_endless_sweep(
        stack: Stack, localstripe_url: str) -> None:
    from shop.api import create_app

    stack.start_worker("w1")
    stack.start_relay()
    with TestClient(create_app()) as client:
        order_id = place(client, payment_method="pm_nobody_knows_this_one")
        assert wait_terminal(stack, [order_id]) == {order_id: "failed"}
        order = client.get(f"/v1/orders/{order_id}").json()
    assert order["failure"]["reason"] == "payment_rejected"
    assert intents_for_order(localstripe_url, order_id) == []
