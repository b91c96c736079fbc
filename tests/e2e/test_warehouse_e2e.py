"""The warehouse's answers end to end (issue 22): a fake warehouse bound to ``shop.events``
receives the fulfillment request and answers on ``shop.warehouse`` (each message twice,
out of order); the API, an outbox relay and a Celery worker (which consumes the answers)
run as processes, on RabbitMQ, PostgreSQL, localstripe and an SMTP server, all real."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from fastapi.testclient import TestClient
from kombu import Connection, Exchange
from sqlalchemy import func, select

from shop.db import session_scope
from shop.orders.fulfillment.models import WarehouseMessage
from shop.orders.models import Product
from shop.orders.refunds.models import RefundRequest
from tests.factories.fulfillment import cannot_fulfil, delivered, routing_key, shipped
from tests.fixtures.api import order_body
from tests.fixtures.stack import Stack, bind_warehouse_queue, drain, drain_raw, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.rabbitmq]

WAREHOUSE = Exchange("shop.warehouse", type="topic", durable=True)


def place(api: TestClient, lines: list[dict[str, Any]]) -> str:
    response = api.post("/v1/orders", json=order_body(lines=lines),
                        headers={"Idempotency-Key": str(uuid.uuid4())})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def answer(broker: str, bodies: list[dict[str, Any]], *, raw: dict[str, bytes] | None = None,
           ) -> None:
    """Publish as the warehouse does: persistent JSON, AMQP message_id = the body's."""
    with Connection(broker) as conn:
        producer = conn.Producer()
        for body in bodies:
            producer.publish(json.dumps(body).encode(), exchange=WAREHOUSE,
                             routing_key=routing_key(body), message_id=body["message_id"],
                             content_type="application/json", content_encoding="utf-8",
                             delivery_mode=2, declare=[WAREHOUSE])
        for key, payload in (raw or {}).items():
            producer.publish(payload, exchange=WAREHOUSE, routing_key=key,
                             message_id="raw-1", content_type="application/json",
                             content_encoding="utf-8", delivery_mode=2)


def stock() -> dict[str, tuple[int, int]]:
    with session_scope() as session:
        return {p.sku: (p.on_hand, p.reserved) for p in session.scalars(select(Product))}


def requested(broker: str, queue: str, stack: Stack) -> dict[str, Any]:
    got: list[Any] = []
    wait_until(lambda: got.extend(drain(broker, queue)) or got, timeout=60,
               what="the fulfillment request", stack=stack)
    return dict(got[0].payload)


def test_two_parcels_a_missing_line_and_deliveries_each_sent_twice_out_of_order(
        stack: Stack, api: TestClient, smtp_server: Any, vhost_url: str) -> None:
    inbox = bind_warehouse_queue(vhost_url)
    stack.start_worker("w1")
    stack.start_relay()
    before = stock()
    order_id = place(api, [{"sku": "MUG-BLUE", "quantity": 2}, {"sku": "NOTE-A5", "quantity": 3},
                           {"sku": "PEN-BRASS", "quantity": 1}])
    request = requested(vhost_url, inbox, stack)
    assert request["order_id"] == order_id
    oid, rid = uuid.UUID(order_id), uuid.UUID(request["message_id"])
    parcels = [shipped(oid, rid, {"MUG-BLUE": 2, "NOTE-A5": 1}, shipment_id="parcel-1"),
               shipped(oid, rid, {"NOTE-A5": 2}, shipment_id="parcel-2")]
    missing = cannot_fulfil(oid, rid, {"PEN-BRASS": 1}, reason="damaged",
                            on_hand={"PEN-BRASS": 7})
    arrivals = [delivered(oid, "parcel-1"), delivered(oid, "parcel-2")]
    # deliveries first, then the missing line, then the parcels; and all again, backwards
    sequence = [*arrivals, missing, *reversed(parcels)]
    answer(vhost_url, sequence + list(reversed(sequence)))

    def done() -> dict[str, Any] | None:
        order = api.get(f"/v1/orders/{order_id}").json()
        fulfillment = order["fulfillment"] or {}
        settled = fulfillment.get("status") == "delivered" and all(
            u["refunded"] for u in fulfillment.get("unfulfilled", [{"refunded": False}]))
        return order if settled else None

    order = wait_until(done, timeout=90, what="a delivered order with its refund",
                       stack=stack)
    smtp_server.wait_for(4, timeout=60)
    time.sleep(3)  # any second copy of an email would arrive meanwhile

    assert order["status"] == "confirmed"
    fulfillment = order["fulfillment"]
    assert [(s["id"], s["lines"], s["carrier"], s["tracking_number"], s["tracking_url"])
            for s in sorted(fulfillment["shipments"], key=lambda s: s["id"])] == [
        ("parcel-1", [{"sku": "MUG-BLUE", "quantity": 2}, {"sku": "NOTE-A5", "quantity": 1}],
         "DHL", "TRK-parcel-1", "https://track.example/parcel-1"),
        ("parcel-2", [{"sku": "NOTE-A5", "quantity": 2}], "DHL", "TRK-parcel-2",
         "https://track.example/parcel-2")]
    assert all(s["delivered_at"] for s in fulfillment["shipments"])
    assert fulfillment["unfulfilled"] == [{"sku": "PEN-BRASS", "quantity": 1,
                                           "reason": "damaged", "refunded": True}]
    assert order["payment"]["amount_refunded"] == 3500  # exactly the brass pen
    with session_scope() as session:
        refunds = session.scalars(select(RefundRequest)).all()
        assert [(r.amount, r.status) for r in refunds] == [(3500, "succeeded")]
        assert session.scalar(select(func.count()).select_from(WarehouseMessage)) == 5
    after = stock()
    assert after["MUG-BLUE"] == (before["MUG-BLUE"][0] - 2, 0)
    assert after["NOTE-A5"] == (before["NOTE-A5"][0] - 3, 0)
    assert after["PEN-BRASS"] == (7, 0)  # the warehouse's count, the unit released
    # (a long subject is folded onto a continuation line: compare it unfolded)
    subjects = Counter(" ".join(str(m["Subject"]).split()) for m in smtp_server.messages)
    assert sum(subjects.values()) == 4, subjects
    assert subjects[f"Your order {order_id} is confirmed"] == 1
    assert subjects[f"Your order {order_id} has shipped: DHL TRK-parcel-1"] == 1
    assert subjects[f"Your order {order_id} has shipped: DHL TRK-parcel-2"] == 1
    assert subjects[f"Part of your order {order_id} could not be shipped and was refunded"] == 1
    shipping = [m for m in smtp_server.messages if "has shipped" in str(m["Subject"])]
    assert all("https://track.example/parcel-" in m.get_body(("plain",)).get_content()
               for m in shipping)
    events = [e["type"] for e in order["events"]]
    assert events.count("fulfillment.shipped") == 2
    assert events.count("fulfillment.delivered") == 2
    assert events.count("fulfillment.cannot_fulfil") == 1
    assert "stock.corrected" in events


def test_a_malformed_message_and_one_for_an_unknown_order_are_dead_lettered_with_a_reason(
        stack: Stack, api: TestClient, vhost_url: str) -> None:
    inbox = bind_warehouse_queue(vhost_url)
    stack.start_worker("w1")
    stack.start_relay()
    order_id = place(api, [{"sku": "MUG-BLUE", "quantity": 1}])
    requested(vhost_url, inbox, stack)
    before = stock()
    stranger = shipped(uuid.uuid4(), uuid.uuid4(), {"MUG-BLUE": 1}, shipment_id="p-x")
    answer(vhost_url, [stranger], raw={"fulfillment.shipped": b'{"message_id": "raw-1", '})

    dead: list[Any] = []
    wait_until(lambda: len(dead.extend(drain_raw(vhost_url, "shop.dead_letter")) or dead) >= 2,
               timeout=60, what="two dead letters", stack=stack)

    reasons = {m.properties["message_id"]: m.headers["x-shop-reason"] for m in dead}
    assert set(reasons) == {"raw-1", stranger["message_id"]}
    assert "malformed" in reasons["raw-1"]
    assert "unknown order" in reasons[stranger["message_id"]]
    assert stock() == before
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(WarehouseMessage)) == 0
    order = api.get(f"/v1/orders/{order_id}").json()
    assert order["fulfillment"] == {"status": "requested", "shipments": [], "unfulfilled": []}
