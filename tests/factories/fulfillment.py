"""The warehouse's messages, as the contract spells them (JSON bytes and their parsed form).

    body = shipped(order, request_id, {"MUG-BLUE": 1}, shipment_id="parcel-1")
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shop.orders.fulfillment.messages import CANNOT_FULFIL, DELIVERED, SHIPPED, Message, parse
from shop.orders.models import FulfillmentRequest, Product
from shop.orders.workflow import steps
from tests.factories.orders import OrderFactory, OrderLineFactory, ProductFactory
from tests.fakes import FakeGateway
from tests.fixtures.outcomes import to_reserved

NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)


def shipped(order_id: uuid.UUID, request_id: uuid.UUID, units: dict[str, int], *,
            shipment_id: str, message_id: str | None = None) -> dict[str, Any]:
    return {"message_id": message_id or str(uuid.uuid4()), "order_id": str(order_id),
            "request_message_id": str(request_id), "shipment_id": shipment_id,
            "lines": [{"sku": s, "quantity": q} for s, q in units.items()],
            "carrier": "DHL", "tracking_number": f"TRK-{shipment_id}",
            "tracking_url": f"https://track.example/{shipment_id}",
            "shipped_at": NOW.isoformat()}


def cannot_fulfil(order_id: uuid.UUID, request_id: uuid.UUID, units: dict[str, int], *,
                  on_hand: dict[str, int] | None = None, reason: str = "damaged",
                  message_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "message_id": message_id or str(uuid.uuid4()), "order_id": str(order_id),
        "request_message_id": str(request_id),
        "lines": [{"sku": s, "quantity": q} for s, q in units.items()], "reason": reason}
    if on_hand is not None:
        body["on_hand"] = on_hand
    return body


def delivered(order_id: uuid.UUID, shipment_id: str, *,
              message_id: str | None = None) -> dict[str, Any]:
    return {"message_id": message_id or str(uuid.uuid4()), "order_id": str(order_id),
            "shipment_id": shipment_id,
            "delivered_at": (NOW + dt.timedelta(days=2)).isoformat()}


def routing_key(body: dict[str, Any]) -> str:
    if "delivered_at" in body:
        return DELIVERED
    return SHIPPED if "shipment_id" in body else CANNOT_FULFIL


def parsed(body: dict[str, Any]) -> Message:
    return parse(routing_key=routing_key(body), body=json.dumps(body).encode(),
                 message_id=body["message_id"])


def confirmed(session: Session, gateway: FakeGateway) -> tuple[uuid.UUID, uuid.UUID]:
    """An order of 3 MUG (15.00) and 1 TEE (7.00), confirmed and requested; its ids."""
    mug = session.get(Product, "MUG") or ProductFactory(sku="MUG", price=1500, on_hand=10)
    tee = session.get(Product, "TEE") or ProductFactory(sku="TEE", price=700, on_hand=5)
    order = OrderFactory(lines=[OrderLineFactory(product=mug, quantity=3),
                                OrderLineFactory(product=tee, quantity=1)], placed=True)
    to_reserved(session, order.id, gateway)
    steps.capture_payment(session, order_id=order.id, gateway=gateway, owner="a")
    steps.request_fulfillment(session, order_id=order.id)
    request_id = session.scalar(select(FulfillmentRequest.id)
                                .where(FulfillmentRequest.order_id == order.id))
    assert request_id is not None
    session.commit()
    return order.id, request_id
