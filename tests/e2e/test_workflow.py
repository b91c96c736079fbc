"""The order workflow end to end: HTTP API, outbox relay, Celery workers on RabbitMQ,
PostgreSQL, localstripe and an SMTP server, all real."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from shop.celery import app as celery_app
from shop.celery import configure
from shop.config import get_settings
from shop.db import session_scope
from shop.messaging import relay
from shop.messaging.models import OutboxMessage
from shop.orders.models import Product
from tests.fixtures.api import ADMIN_TOKEN, order_body
from tests.fixtures.localstripe import fetch_intents
from tests.fixtures.stack import (
    Stack,
    bind_warehouse_queue,
    drain,
    drain_raw,
    statuses,
    wait_terminal,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.rabbitmq]

DECLINING_CARD = "pm_card_chargeCustomerFail"  # localstripe declines it at confirmation


def place(api: TestClient, **overrides: Any) -> str:
    response = api.post("/v1/orders", json=order_body(**overrides),
                        headers={"Idempotency-Key": str(uuid.uuid4())})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def intents_by_order(localstripe_url: str) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for intent in fetch_intents(localstripe_url):
        order_id = (intent.get("metadata") or {}).get("order_id")
        if order_id:
            found.setdefault(order_id, []).append(intent)
    return found


def captured_amount(localstripe_url: str, intent: dict[str, Any]) -> int:
    """What the intent's charge actually took (localstripe has no ``amount_received``)."""
    charge = intent["latest_charge"]
    if isinstance(charge, str):
        charge = httpx.get(f"{localstripe_url}/v1/charges/{charge}",
                           headers={"Authorization": "Bearer sk_test_shop"}).json()
    assert charge["captured"] is True
    return int(charge["amount"]) - int(charge.get("amount_refunded") or 0)


def emails_by_order(smtp_server: Any, order_ids: list[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for message in smtp_server.messages:
        text = message.as_string()
        for order_id in order_ids:
            if order_id in text:
                counts[order_id] += 1
    return counts


def stock(sku: str) -> tuple[int, int]:
    with session_scope() as session:
        product = session.get(Product, sku)
        assert product is not None
        return product.on_hand, product.reserved


def test_an_order_is_confirmed_captured_mailed_and_sent_to_the_warehouse(
        stack: Stack, api: TestClient, localstripe_url: str, smtp_server: Any,
        vhost_url: str) -> None:
    warehouse = bind_warehouse_queue(vhost_url)
    stack.start_worker("w1")
    stack.start_relay()
    order_id = place(api, lines=[{"sku": "MUG-BLUE", "quantity": 2},
                                 {"sku": "NOTE-A5", "quantity": 1}])
    assert wait_terminal(stack, [order_id]) == {order_id: "confirmed"}

    order = api.get(f"/v1/orders/{order_id}").json()
    assert order["total"] == 3900
    assert order["payment"]["status"] == "captured"
    intents = intents_by_order(localstripe_url)[order_id]
    assert len(intents) == 1
    assert intents[0]["id"] == order["payment"]["reference"]
    assert intents[0]["status"] == "succeeded"
    assert captured_amount(localstripe_url, intents[0]) == 3900
    assert intents[0]["metadata"] == {"order_id": order_id, "attempt": "1"}

    smtp_server.wait_for(1, timeout=30)
    wait_until(lambda: drain_once(vhost_url, warehouse), timeout=30, what="fulfillment",
               stack=stack)
    mail = smtp_server.messages[0]
    body = mail.get_body(("plain",)).get_content()
    for expected in (order_id, "Blue enamel mug", "A5 dotted notebook", "39.00 USD"):
        assert expected in body
    assert mail["To"] == "ada@example.com"
    message = FULFILLMENT[-1]
    assert message.payload["order_id"] == order_id
    assert message.properties["message_id"] == message.payload["message_id"]
    assert [x["sku"] for x in message.payload["lines"]] == ["MUG-BLUE", "NOTE-A5"]
    assert stock("MUG-BLUE") == (40, 2)
    events = [e["type"] for e in api.get(f"/v1/orders/{order_id}").json()["events"]]
    assert events[:5] == ["order.placed", "inventory.confirmed", "payment.authorized",
                          "stock.reserved", "payment.captured"]
    assert {"email.confirmation_sent", "fulfillment.requested"} <= set(events)


FULFILLMENT: list[Any] = []


def drain_once(broker: str, queue: str) -> bool:
    got = drain(broker, queue)
    FULFILLMENT.extend(got)
    return bool(got)


def test_a_declined_card_fails_the_order_and_leaves_stock_alone(
        stack: Stack, api: TestClient, smtp_server: Any) -> None:
    stack.start_worker("w1")
    stack.start_relay()
    order_id = place(api, payment_method=DECLINING_CARD)
    assert wait_terminal(stack, [order_id]) == {order_id: "failed"}
    order = api.get(f"/v1/orders/{order_id}").json()
    assert order["failure"]["step"] == "payment"
    assert order["failure"]["reason"] == "card_declined"
    assert stock("MUG-BLUE") == (40, 0)
    assert smtp_server.messages == []


def test_too_much_quantity_fails_at_inventory_without_a_payment_intent(
        stack: Stack, api: TestClient, localstripe_url: str) -> None:
    stack.start_worker("w1")
    stack.start_relay()
    order_id = place(api, lines=[{"sku": "PEN-BRASS", "quantity": 11}])
    assert wait_terminal(stack, [order_id]) == {order_id: "failed"}
    order = api.get(f"/v1/orders/{order_id}").json()
    assert (order["failure"]["step"], order["failure"]["reason"]) == ("inventory",
                                                                      "out_of_stock")
    assert order["payment"] is None
    assert order_id not in intents_by_order(localstripe_url)
    assert stock("PEN-BRASS") == (10, 0)


def test_forty_orders_for_ten_units_never_oversell(
        stack: Stack, api: TestClient, localstripe_url: str) -> None:
    api.put("/admin/products/LIMITED", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            json={"name": "Limited print", "price": 5000, "currency": "USD", "stock": 10})
    stack.start_worker("w1")
    stack.start_worker("w2")
    stack.start_relay()
    low_water: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            on_hand, reserved = stock("LIMITED")
            low_water.append(on_hand - reserved)
            stop.wait(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    with ThreadPoolExecutor(max_workers=10) as pool:
        order_ids = list(pool.map(
            lambda _: place(api, lines=[{"sku": "LIMITED", "quantity": 1}]), range(40)))
    try:
        final = wait_terminal(stack, order_ids, timeout=180)
    finally:
        stop.set()
        watcher.join()
    assert Counter(final.values()) == {"confirmed": 10, "failed": 30}
    assert stock("LIMITED") == (10, 10)
    assert min(low_water) >= 0
    intents = intents_by_order(localstripe_url)
    captured = [i for o in order_ids for i in intents.get(o, []) if i["status"] == "succeeded"]
    assert len(captured) == 10
    assert {i["metadata"]["order_id"] for i in captured} == {
        o for o, s in final.items() if s == "confirmed"}
    for order_id in (o for o, s in final.items() if s == "failed"):
        wait_until(lambda o=order_id: all(i["status"] == "canceled" for i in
                                          intents_by_order(localstripe_url).get(o, [])),
                   timeout=30, what=f"intents of {order_id} to be cancelled", stack=stack)


class DoublingPublisher(relay.Publisher):
    """Publishes every workflow task message twice, as an at-least-once broker may."""

    def __call__(self, message: OutboxMessage) -> None:
        super().__call__(message)
        if message.kind == "task":
            super().__call__(message)


def test_every_workflow_message_delivered_twice_changes_nothing(
        stack: Stack, api: TestClient, localstripe_url: str, smtp_server: Any,
        vhost_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every message goes through this test's doubling relay, none straight from a commit.
    stack.env["SHOP_PUBLISH_ON_COMMIT"] = "false"
    monkeypatch.setenv("SHOP_PUBLISH_ON_COMMIT", "false")
    get_settings.cache_clear()
    warehouse = bind_warehouse_queue(vhost_url)
    stack.start_worker("w1")
    stack.start_worker("w2")
    configure(celery_app, get_settings())
    stop = threading.Event()
    publisher = DoublingPublisher(celery_app)

    def run_relay() -> None:
        while not stop.is_set():
            if relay.relay_once(publisher) == 0:
                stop.wait(0.1)

    thread = threading.Thread(target=run_relay)
    thread.start()
    try:
        order_ids = [place(api) for _ in range(3)]
        assert set(wait_terminal(stack, order_ids).values()) == {"confirmed"}
        smtp_server.wait_for(3, timeout=30)
        wait_until(lambda: _fulfillment_rows_published(), timeout=30, what="events out")
        time.sleep(3)  # let any duplicate copies still in flight finish
    finally:
        stop.set()
        thread.join()
        publisher.reset()
    intents = intents_by_order(localstripe_url)
    for order_id in order_ids:
        captured = [i for i in intents[order_id] if i["status"] == "succeeded"]
        assert len(captured) == 1, intents[order_id]
    assert emails_by_order(smtp_server, order_ids) == dict.fromkeys(order_ids, 1)
    messages = drain(vhost_url, warehouse)
    assert sorted(m.payload["order_id"] for m in messages) == sorted(order_ids)
    assert stock("MUG-BLUE") == (40, 6)


def _fulfillment_rows_published() -> bool:
    with session_scope() as session:
        rows = session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "event"))
        found = list(rows)
        return len(found) == 3 and all(m.published_at for m in found)


def test_a_worker_killed_mid_run_loses_nothing_and_charges_nothing_twice(
        stack: Stack, api: TestClient, localstripe_url: str, smtp_server: Any) -> None:
    stack.start_worker("w1")
    stack.start_worker("w2")
    stack.start_relay()
    with ThreadPoolExecutor(max_workers=8) as pool:
        order_ids = list(pool.map(lambda _: place(api, lines=[
            {"sku": "STICKER-PACK", "quantity": 1}]), range(100)))
    wait_until(lambda: sum(s in ("confirmed", "failed") for s in
                           statuses(order_ids).values()) >= 15,
               timeout=120, what="the run to be under way", stack=stack)
    stack.kill("w1")
    stack.start_worker("w3")
    final = wait_terminal(stack, order_ids, timeout=300)
    assert set(final.values()) == {"confirmed"}, Counter(final.values())
    intents = intents_by_order(localstripe_url)
    for order_id in order_ids:
        captured = [i for i in intents[order_id] if i["status"] == "succeeded"]
        assert len(captured) == 1, (order_id, intents[order_id])
    smtp_server.wait_for(100, timeout=120)
    assert emails_by_order(smtp_server, order_ids) == dict.fromkeys(order_ids, 1)
    assert stock("STICKER-PACK") == (200, 100)


@pytest.mark.exclusive  # stops the machine's RabbitMQ: nothing else may run meanwhile
def test_orders_are_accepted_while_rabbitmq_is_down_and_processed_after(
        stack: Stack, api: TestClient) -> None:
    stack.start_worker("w1")
    stack.start_relay()
    first = place(api)
    assert wait_terminal(stack, [first]) == {first: "confirmed"}
    subprocess_rabbit("stop_app")
    try:
        order_id = place(api)
        health = api.get("/healthz")
        assert health.status_code == 503
        assert health.json()["down"] == ["broker"]
        time.sleep(2)
        assert statuses([order_id]) == {order_id: "pending"}
    finally:
        subprocess_rabbit("start_app")
    assert wait_terminal(stack, [order_id], timeout=180) == {order_id: "confirmed"}


def subprocess_rabbit(command: str) -> None:
    from tests.fixtures.stack import rabbitmqctl

    rabbitmqctl(command)
    if command == "start_app":
        rabbitmqctl("await_startup")


def test_poison_and_unknown_messages_are_dead_lettered_and_the_worker_goes_on(
        stack: Stack, api: TestClient, vhost_url: str) -> None:
    from kombu import Connection, Exchange

    stack.start_worker("w1")
    stack.start_relay()
    first = place(api)
    assert wait_terminal(stack, [first]) == {first: "confirmed"}  # queues are declared
    with Connection(vhost_url) as conn:
        producer = conn.Producer()
        orders = Exchange("orders", type="direct", durable=True)
        producer.publish(b"\x80\x04not json", exchange=orders, routing_key="orders",
                         content_type="application/x-python-serialize",
                         content_encoding="binary", headers={"task": "x", "id": "poison-1"})
        producer.publish({"order_id": first}, exchange=orders, routing_key="orders",
                         serializer="json", headers={"task": "shop.orders.no_such_step",
                                                     "id": "unknown-1", "argsrepr": "",
                                                     "kwargsrepr": ""})
    wait_until(lambda: len(DEAD.extend(drain_raw(vhost_url, "shop.dead_letter")) or DEAD) >= 2,
               timeout=30, what="two dead letters", stack=stack)
    assert sorted((m.headers or {}).get("id") for m in DEAD) == ["poison-1", "unknown-1"]
    after = place(api)
    assert wait_terminal(stack, [after]) == {after: "confirmed"}


DEAD: list[Any] = []


def _failures_counted(task: str) -> int:
    from shop.messaging.models import TaskDelivery

    with session_scope() as session:
        rows = session.scalars(select(TaskDelivery).where(
            TaskDelivery.task_name == task, TaskDelivery.message_id.like("%:failures")))
        return sum(row.deliveries for row in rows)


def test_a_payment_step_retried_with_backoff_comes_back_and_confirms(
        stack: Stack, api: TestClient, localstripe_url: str) -> None:
    from urllib.parse import urlsplit

    from tests.fixtures.api import free_port
    from tests.fixtures.proxy import Forwarder

    target = urlsplit(localstripe_url)
    proxy = Forwarder(free_port(), (target.hostname or "127.0.0.1", target.port or 80))
    stack.env["SHOP_STRIPE_API_BASE"] = f"http://127.0.0.1:{proxy.port}"
    stack.start_worker("w1")
    stack.start_relay()
    order_id = place(api)
    try:
        wait_until(lambda: _failures_counted("shop.orders.charge_payment") >= 2, timeout=60,
                   what="the provider to fail twice", stack=stack)
        assert statuses([order_id]) == {order_id: "pending"}
        proxy.start()
        assert wait_terminal(stack, [order_id], timeout=60) == {order_id: "confirmed"}
    finally:
        proxy.stop()
    assert len(intents_by_order(localstripe_url)[order_id]) == 1


def test_when_retries_run_out_the_order_fails_holding_nothing(
        stack: Stack, api: TestClient) -> None:
    from tests.fixtures.api import free_port

    stack.env["SHOP_STRIPE_API_BASE"] = f"http://127.0.0.1:{free_port()}"  # nobody there
    stack.env["SHOP_RETRY_MAX_ATTEMPTS"] = "3"
    stack.env["SHOP_RETRY_BASE_DELAY"] = "0.2"
    stack.start_worker("w1")
    stack.start_relay()
    order_id = place(api)
    assert wait_terminal(stack, [order_id], timeout=60) == {order_id: "failed"}
    order = api.get(f"/v1/orders/{order_id}").json()
    assert (order["failure"]["step"], order["failure"]["reason"]) == (
        "payment", "payment_unavailable")
    assert _failures_counted("shop.orders.charge_payment") == 3
    assert stock("MUG-BLUE") == (40, 0)


def test_a_card_needing_3d_secure_waits_in_requires_action_with_its_client_secret(
        stack: Stack, api: TestClient, localstripe_url: str) -> None:
    from tests.fixtures.localstripe import THREE_DS_CARD, create_card_payment_method

    stack.start_worker("w1")
    stack.start_relay()
    method = create_card_payment_method(localstripe_url, THREE_DS_CARD)
    order_id = place(api, payment_method=method)
    wait_until(lambda: statuses([order_id]) == {order_id: "requires_action"}, timeout=60,
               what="requires_action", stack=stack)
    order = api.get(f"/v1/orders/{order_id}").json()
    assert order["payment"]["status"] == "requires_action"
    assert order["payment"]["client_secret"]
    (intent,) = intents_by_order(localstripe_url)[order_id]
    assert intent["status"] == "requires_action"
    assert stock("MUG-BLUE") == (40, 0)
