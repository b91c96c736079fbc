"""The warehouse's answers applied to confirmed orders (issue 22): once by message id, in
any order, stock leaving the shelf once, unshippable lines refunded exactly, and refused
messages leaving nothing behind. SQLite and PostgreSQL, a recording fake gateway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shop.messaging.models import OutboxMessage
from shop.orders.fulfillment import service
from shop.orders.fulfillment.messages import Invalid, parse
from shop.orders.fulfillment.models import Shipment, WarehouseMessage
from shop.orders.fulfillment.views import fulfillment_of
from shop.orders.models import Product
from shop.orders.provider import converge
from shop.orders.refunds.models import RefundRequest
from tests.factories.fulfillment import cannot_fulfil, confirmed, delivered, parsed, shipped
from tests.fakes import FakeGateway
from tests.fixtures.admin_pages import AUTH
from tests.fixtures.api import ADMIN_TOKEN
from tests.fixtures.outcomes import payment_of

BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def stock(session: Session) -> dict[str, tuple[int, int]]:
    session.expire_all()
    return {p.sku: (p.on_hand, p.reserved) for p in session.scalars(select(Product))}


def apply(session: Session, body: dict[str, Any]) -> str:
    return service.apply(session, message=parsed(body))


def status(session: Session, order_id: uuid.UUID) -> str:
    session.expire_all()
    view = fulfillment_of(session, order_id=order_id)
    assert view is not None
    return view.status


def test_two_parcels_leave_the_shelf_once_each_however_often_they_are_announced(
        session: Session, gateway: FakeGateway) -> None:
    order_id, request_id = confirmed(session, gateway)
    assert stock(session) == {"MUG": (10, 3), "TEE": (5, 1)}
    first = shipped(order_id, request_id, {"MUG": 2}, shipment_id="p1")
    second = shipped(order_id, request_id, {"MUG": 1, "TEE": 1}, shipment_id="p2")

    assert apply(session, first) == "applied"
    assert apply(session, first) == "duplicate"
    assert status(session, order_id) == "partially_shipped"
    assert stock(session) == {"MUG": (8, 1), "TEE": (5, 1)}
    # the same parcel under another message id is the same parcel
    assert apply(session, {**first, "message_id": "again"}) == "duplicate"
    assert apply(session, second) == "applied"

    assert stock(session) == {"MUG": (7, 0), "TEE": (4, 0)}
    assert status(session, order_id) == "shipped"
    view = fulfillment_of(session, order_id=order_id)
    assert view is not None
    assert [(s.id, [(x.sku, x.quantity) for x in s.lines]) for s in view.shipments] == [
        ("p1", [("MUG", 2)]), ("p2", [("MUG", 1), ("TEE", 1)])]
    emails = session.scalars(select(OutboxMessage.payload).where(
        OutboxMessage.name == "shop.orders.send_shipment_email")).all()
    assert sorted(e["shipment_id"] for e in emails) == ["p1", "p2"]


def test_a_delivery_before_its_shipment_waits_for_it(session: Session,
                                                     gateway: FakeGateway) -> None:
    order_id, request_id = confirmed(session, gateway)
    early = delivered(order_id, "p1")

    assert apply(session, early) == "parked"
    assert apply(session, early) == "duplicate"
    assert status(session, order_id) == "requested"
    assert apply(session, shipped(order_id, request_id, {"MUG": 3, "TEE": 1},
                                  shipment_id="p1")) == "applied"

    assert status(session, order_id) == "delivered"
    shipment = session.scalar(select(Shipment).where(Shipment.shipment_id == "p1"))
    assert shipment is not None
    assert shipment.delivered_at is not None
    row = session.get(WarehouseMessage, early["message_id"])
    assert row is not None
    assert row.status == "applied"


def test_a_line_that_cannot_ship_is_released_refunded_exactly_and_the_shelf_corrected(
        session: Session, gateway: FakeGateway) -> None:
    order_id, request_id = confirmed(session, gateway)
    body = cannot_fulfil(order_id, request_id, {"TEE": 1}, on_hand={"TEE": 2})

    assert apply(session, body) == "applied"
    assert apply(session, body) == "duplicate"

    assert stock(session) == {"MUG": (10, 3), "TEE": (2, 0)}
    [refund] = session.scalars(select(RefundRequest)).all()
    assert (refund.amount, refund.source) == (700, "warehouse")
    assert [(x.sku, x.quantity, x.restock) for x in refund.lines] == [("TEE", 1, False)]
    converge.refund_lines(session, refund_id=refund.id, gateway=gateway, owner="r")
    assert payment_of(session, order_id).amount_refunded == 700
    view = fulfillment_of(session, order_id=order_id)
    assert view is not None
    assert view.status == "requested"
    assert [(u.sku, u.quantity, u.refunded) for u in view.unfulfilled] == [("TEE", 1, True)]
    assert session.scalar(select(func.count()).select_from(OutboxMessage).where(
        OutboxMessage.name == "shop.orders.send_line_refund_email")) == 1
    # then the rest ships: the order is shipped, the refund stays the one line's
    apply(session, shipped(order_id, request_id, {"MUG": 3}, shipment_id="p1"))
    assert status(session, order_id) == "shipped"
    assert stock(session) == {"MUG": (7, 0), "TEE": (2, 0)}


def test_an_order_none_of_whose_lines_can_ship_is_unfulfillable_and_refunded_in_full(
        session: Session, gateway: FakeGateway) -> None:
    order_id, request_id = confirmed(session, gateway)
    apply(session, cannot_fulfil(order_id, request_id, {"TEE": 1}))
    apply(session, cannot_fulfil(order_id, request_id, {"MUG": 3}, reason="lost"))

    assert status(session, order_id) == "unfulfillable"
    for refund in session.scalars(select(RefundRequest)).all():
        converge.refund_lines(session, refund_id=refund.id, gateway=gateway, owner="r")
    payment = payment_of(session, order_id)
    assert payment.amount_refunded == payment.amount_captured == 3 * 1500 + 700
    assert payment.status == "refunded"
    assert stock(session) == {"MUG": (10, 0), "TEE": (5, 0)}


@pytest.mark.parametrize("what", ["unknown_order", "unknown_line", "too_many", "request",
                                  "unknown_product", "other_orders_shipment"])
def test_a_message_naming_what_the_shop_does_not_know_is_refused_and_changes_nothing(
        session: Session, gateway: FakeGateway, what: str) -> None:
    order_id, request_id = confirmed(session, gateway)
    other_id, other_request = confirmed(session, gateway)
    apply(session, shipped(other_id, other_request, {"MUG": 1}, shipment_id="theirs"))
    before = stock(session)
    body = {
        "unknown_order": shipped(uuid.uuid4(), request_id, {"MUG": 1}, shipment_id="x"),
        "unknown_line": shipped(order_id, request_id, {"MUG": 1, "HAT": 1}, shipment_id="x"),
        "too_many": cannot_fulfil(order_id, request_id, {"MUG": 4}),
        "request": shipped(order_id, uuid.uuid4(), {"MUG": 1}, shipment_id="x"),
        "unknown_product": cannot_fulfil(order_id, request_id, {"MUG": 1},
                                         on_hand={"MUG": 5, "NOPE": 1}),
        "other_orders_shipment": delivered(order_id, "theirs"),
    }[what]

    with pytest.raises(service.Rejected) as refused:
        apply(session, body)

    assert refused.value.reason
    assert stock(session) == before
    assert session.get(WarehouseMessage, body["message_id"]) is None
    assert session.scalar(select(func.count()).select_from(RefundRequest)) == 0
    assert status(session, order_id) == "requested"


@pytest.mark.parametrize(("body", "amqp_id"), [
    (b"not json", "m1"),
    (json.dumps({"message_id": "m1", "order_id": "not-a-uuid"}).encode(), "m1"),
    (json.dumps({"message_id": "m1", "order_id": str(uuid.uuid4()), "shipment_id": "p",
                 "delivered_at": "2026-12-04T10:00:00"}).encode(), "m1"),  # no zone
    (json.dumps({"message_id": "m1", "order_id": str(uuid.uuid4()), "shipment_id": "p",
                 "delivered_at": "2026-12-04T10:00:00Z"}).encode(), "m2"),  # ids differ
    (json.dumps({"message_id": "m1", "order_id": str(uuid.uuid4()), "shipment_id": "p\nBcc",
                 "delivered_at": "2026-12-04T10:00:00Z"}).encode(), "m1"),  # two lines
])
def test_a_message_the_shop_cannot_read_is_invalid(body: bytes, amqp_id: str) -> None:
    with pytest.raises(Invalid):
        parse(routing_key="fulfillment.delivered", body=body, message_id=amqp_id)


@pytest.mark.parametrize("field", ["on_hand", "quantity"])
def test_a_count_past_what_the_database_holds_is_invalid_not_retried(field: str) -> None:
    """2^31 would overflow PostgreSQL's integer columns mid-transaction: refused on
    parsing (dead-lettered with a reason), not retried until the delivery bound."""
    order_id, request_id = uuid.uuid4(), uuid.uuid4()
    big = 2**31
    body = cannot_fulfil(order_id, request_id, {"MUG": big if field == "quantity" else 1},
                         on_hand={"MUG": big} if field == "on_hand" else {"MUG": 0})
    with pytest.raises(Invalid):
        parse(routing_key="fulfillment.cannot_fulfil", body=json.dumps(body).encode(),
              message_id=body["message_id"])


def test_a_quantity_as_a_string_is_not_coerced() -> None:
    body = shipped(uuid.uuid4(), uuid.uuid4(), {"MUG": 1}, shipment_id="p")
    body["lines"][0]["quantity"] = "1"
    with pytest.raises(Invalid, match="quantity"):
        parse(routing_key="fulfillment.shipped", body=json.dumps(body).encode(),
              message_id=body["message_id"])


def test_admins_filter_by_fulfillment_and_see_the_shipments(
        client: Any, session: Session, gateway: FakeGateway) -> None:
    order_id, request_id = confirmed(session, gateway)
    other_id, _ = confirmed(session, gateway)
    apply(session, shipped(order_id, request_id, {"MUG": 1}, shipment_id="p1"))
    session.commit()

    listed = client.get("/admin/orders?fulfillment=partially_shipped", headers=BEARER).json()
    assert [o["id"] for o in listed["orders"]] == [str(order_id)]
    assert listed["orders"][0]["fulfillment_status"] == "partially_shipped"
    waiting = client.get("/admin/orders?fulfillment=requested", headers=BEARER).json()
    assert [o["id"] for o in waiting["orders"]] == [str(other_id)]
    assert client.get("/admin/orders?fulfillment=lost", headers=BEARER).status_code == 422
    detail = client.get(f"/admin/orders/{order_id}", headers=BEARER).json()
    [parcel] = detail["fulfillment"]["shipments"]
    assert (parcel["id"], parcel["tracking_number"]) == ("p1", "TRK-p1")
    assert "fulfillment.shipped" in [e["type"] for e in detail["events"]]
    page = client.get(f"/admin/pages/orders/{order_id}", auth=AUTH).text
    assert "https://track.example/p1" in page
    public = client.get(f"/v1/orders/{order_id}").json()["fulfillment"]
    assert public["status"] == "partially_shipped"
    assert public["shipments"][0]["lines"] == [{"sku": "MUG", "quantity": 1}]


def test_the_cli_shows_the_shipments(session: Session, gateway: FakeGateway,
                                     db_url: str) -> None:
    order_id, request_id = confirmed(session, gateway)
    apply(session, shipped(order_id, request_id, {"MUG": 3}, shipment_id="p1"))
    apply(session, cannot_fulfil(order_id, request_id, {"TEE": 1}, reason="damaged"))
    session.commit()

    shown = subprocess.run([sys.executable, "-m", "shop.cli", "orders", "show", str(order_id)],
                           env={**os.environ, "SHOP_DATABASE_URL": db_url},
                           capture_output=True, text=True, timeout=60)

    assert shown.returncode == 0, shown.stderr
    assert "fulfillment: shipped" in shown.stdout
    assert "shipment p1  MUG x3  DHL TRK-p1" in shown.stdout
    assert "cannot ship TEE x1  damaged  not refunded yet" in shown.stdout


def test_an_order_with_shipped_units_or_a_line_refund_under_way_is_not_cancelled(
        client: Any, session: Session, gateway: FakeGateway) -> None:
    """Cancelling would refund goods the customer has, or refund twice what a line refund
    has reserved: 409, and nothing moves; a person refunds lines instead."""
    shipped_id, request_id = confirmed(session, gateway)
    apply(session, shipped(shipped_id, request_id, {"MUG": 1}, shipment_id="p1"))
    session.commit()
    before = stock(session)
    session.commit()  # the API's own transaction, not one the test holds (SQLite)
    answer = client.post(f"/admin/orders/{shipped_id}/cancel", headers=BEARER)
    assert answer.status_code == 409, answer.text
    assert "refund its lines" in answer.text
    assert stock(session) == before
    assert payment_of(session, shipped_id).amount_refunded == 0
    session.commit()

    refunding_id, _ = confirmed(session, gateway)
    answer = client.post(f"/admin/orders/{refunding_id}/refunds", headers=BEARER,
                         json={"lines": [{"sku": "TEE", "quantity": 1, "restock": True}],
                               "reason": "damaged"})
    assert answer.status_code == 202, answer.text
    session.expire_all()
    [refund] = session.scalars(select(RefundRequest).where(
        RefundRequest.order_id == refunding_id)).all()
    assert refund.status == "pending"  # queued for the payments worker, none runs here
    session.commit()
    answer = client.post(f"/admin/orders/{refunding_id}/cancel", headers=BEARER)
    assert answer.status_code == 409, answer.text
    assert "line refund under way" in answer.text
    session.expire_all()
    assert status(session, refunding_id) == "requested"
