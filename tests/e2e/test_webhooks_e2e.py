"""Stripe's door, end to end: localstripe, PostgreSQL, RabbitMQ and real workers. Events
are either signed by the test exactly as Stripe signs them, or sent by localstripe itself."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import select

from shop.db import session_scope
from shop.messaging.service import enqueue_task
from shop.orders.workflow.table import TaskName
from shop.payments.models import WebhookEvent
from tests.fixtures.api import free_port, order_body
from tests.fixtures.localstripe import (
    THREE_DS_CARD,
    authenticate,
    create_card_payment_method,
    intents_for_order,
)
from tests.fixtures.stack import Stack, statuses, wait_terminal, wait_until
from tests.fixtures.webhooks import WEBHOOK_SECRET, charge_event, delivery, intent_event

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.rabbitmq]
AUTH = {"Authorization": "Bearer sk_test_shop"}


def place(api: TestClient, **overrides: Any) -> str:
    response = api.post("/v1/orders", json=order_body(**overrides),
                        headers={"Idempotency-Key": str(uuid.uuid4())})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def deliver(api: TestClient, payload: dict[str, Any]) -> None:
    body, headers = delivery(payload)
    assert api.post("/webhooks/stripe", content=body, headers=headers).status_code == 200


def captures(localstripe_url: str, order_id: str) -> int:
    return sum(1 for i in intents_for_order(localstripe_url, order_id)
               if i["status"] == "succeeded")


def mails(smtp_server: Any, order_id: str) -> int:
    return sum(1 for m in smtp_server.messages if order_id in m.as_string())


def handled(event_type: str) -> list[tuple[str, str | None]]:
    with session_scope() as session:
        rows = session.execute(select(WebhookEvent.outcome, WebhookEvent.processed_at)
                               .where(WebhookEvent.type == event_type)).all()
    return [(str(outcome), str(at)) for outcome, at in rows]


def start(stack: Stack) -> None:
    stack.start_worker("w1")
    stack.start_relay()


def test_a_3d_secure_payment_is_confirmed_after_the_customer_authenticates(
        stack: Stack, api: TestClient, localstripe_url: str, smtp_server: Any) -> None:
    start(stack)
    order_id = place(api, payment_method=create_card_payment_method(localstripe_url,
                                                                    THREE_DS_CARD))
    wait_until(lambda: statuses([order_id]) == {order_id: "requires_action"}, timeout=60,
               what="requires_action", stack=stack)
    payment = api.get(f"/v1/orders/{order_id}").json()["payment"]
    intent = authenticate(localstripe_url, payment["reference"],
                          client_secret=payment["client_secret"], success=True)
    assert intent["status"] == "requires_capture"
    deliver(api, intent_event("payment_intent.amount_capturable_updated", intent["id"],
                              order_id=order_id, status="requires_capture"))
    assert wait_terminal(stack, [order_id]) == {order_id: "confirmed"}
    smtp_server.wait_for(1, timeout=30)
    assert (captures(localstripe_url, order_id), mails(smtp_server, order_id)) == (1, 1)


def test_the_same_success_five_times_among_stale_failures_captures_once(
        stack: Stack, api: TestClient, localstripe_url: str, smtp_server: Any) -> None:
    start(stack)
    order_id = place(api, payment_method=create_card_payment_method(localstripe_url,
                                                                    THREE_DS_CARD))
    wait_until(lambda: statuses([order_id]) == {order_id: "requires_action"}, timeout=60,
               what="requires_action", stack=stack)
    payment = api.get(f"/v1/orders/{order_id}").json()["payment"]
    authenticate(localstripe_url, payment["reference"], client_secret=payment["client_secret"],
                 success=True)
    success = intent_event("payment_intent.succeeded", payment["reference"],
                           order_id=order_id, event_id=f"evt_ok_{order_id[:8]}")
    stale = intent_event("payment_intent.payment_failed", payment["reference"],
                         order_id=order_id, status="requires_payment_method")
    for payload in (success, stale, success, success, stale, success, success):
        deliver(api, payload)
    assert wait_terminal(stack, [order_id]) == {order_id: "confirmed"}
    smtp_server.wait_for(1, timeout=30)
    time.sleep(2)
    assert (captures(localstripe_url, order_id), mails(smtp_server, order_id)) == (1, 1)


def test_refunds_made_at_the_provider_show_on_the_order(
        stack: Stack, api: TestClient, localstripe_url: str) -> None:
    start(stack)
    order_id = place(api)
    assert wait_terminal(stack, [order_id]) == {order_id: "confirmed"}
    order = api.get(f"/v1/orders/{order_id}").json()
    reference, total = order["payment"]["reference"], order["total"]
    for amount, expected in ((1000, "partially_refunded"), (total - 1000, "refunded")):
        httpx.post(f"{localstripe_url}/v1/refunds", headers=AUTH,
                   data={"payment_intent": reference, "amount": amount}).raise_for_status()
        deliver(api, charge_event("charge.refunded", reference))
        wait_until(lambda e=expected: api.get(f"/v1/orders/{order_id}").json()[
            "payment"]["status"] == e, timeout=30, what=expected, stack=stack)
    payment = api.get(f"/v1/orders/{order_id}").json()["payment"]
    assert (payment["amount_captured"], payment["amount_refunded"]) == (total, total)


def test_an_abandoned_authentication_is_cancelled_and_the_order_fails(
        stack: Stack, api: TestClient, localstripe_url: str) -> None:
    stack.env["SHOP_REQUIRES_ACTION_TIMEOUT"] = "1"
    start(stack)
    order_id = place(api, payment_method=create_card_payment_method(localstripe_url,
                                                                    THREE_DS_CARD))
    wait_until(lambda: statuses([order_id]) == {order_id: "requires_action"}, timeout=60,
               what="requires_action", stack=stack)
    time.sleep(1.5)
    with session_scope() as session:  # what beat sends every minute
        enqueue_task(session, name=TaskName.EXPIRE_AUTHENTICATIONS, kwargs={})
        session.commit()
    assert wait_terminal(stack, [order_id]) == {order_id: "failed"}
    order = api.get(f"/v1/orders/{order_id}").json()
    assert (order["failure"]["reason"], order["failure"]["message"]) == (
        "authentication_failed", "The customer did not complete authentication.")
    [intent] = intents_for_order(localstripe_url, order_id)
    assert intent["status"] == "canceled"


@pytest.fixture
def served(stack: Stack) -> Iterator[str]:
    """The API as a real server on a free port, for localstripe to deliver to."""
    from shop.api import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=10, what="uvicorn")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_localstripes_own_deliveries_race_the_workflow_and_end_once(
        stack: Stack, served: str, localstripe_url: str, smtp_server: Any) -> None:
    hook = f"shop_{uuid.uuid4().hex[:8]}"
    httpx.post(f"{localstripe_url}/_config/webhooks/{hook}", data={
        "url": f"{served}/webhooks/stripe", "secret": WEBHOOK_SECRET}).raise_for_status()
    try:
        start(stack)
        with TestClient(__import__("shop.api", fromlist=["create_app"]).create_app()) as api:
            order_ids = [place(api) for _ in range(8)]
            declined = place(api, payment_method="pm_card_chargeCustomerFail")
        final = wait_terminal(stack, [*order_ids, declined])
        assert Counter(final.values()) == {"confirmed": 8, "failed": 1}
        # localstripe sends payment_intent.succeeded as it captures: a race with the
        # capture step's own commit, for every order.
        wait_until(lambda: len([o for o, at in handled("payment_intent.succeeded")
                                if at != "None"]) >= 8, timeout=60, stack=stack,
                   what="localstripe's success events to be handled")
        wait_until(lambda: handled("payment_intent.payment_failed"), timeout=30,
                   stack=stack, what="localstripe's failure event")
        smtp_server.wait_for(8, timeout=60)
        time.sleep(2)
        for order_id in order_ids:
            assert (captures(localstripe_url, order_id), mails(smtp_server, order_id)) == (1, 1)
        assert {o for o, _ in handled("payment_intent.succeeded")} <= {"unchanged", "confirmed"}
    finally:  # stop deliveries to this test's server
        httpx.post(f"{localstripe_url}/_config/webhooks/{hook}", data={
            "url": f"{served}/webhooks/stripe", "secret": WEBHOOK_SECRET,
            "events[0]": "nothing.ever"}).raise_for_status()
