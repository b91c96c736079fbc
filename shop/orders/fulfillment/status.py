"""The contract's ``fulfillment.status`` of a confirmed order, from what its lines and
shipments say (kept on ``FulfillmentRequest.status`` for the admin filter and reports).

    requested           nothing shipped yet, something left to ship
    partially_shipped   some units shipped, some still to ship
    shipped             every unit that can ship has shipped
    delivered           ... and every shipment is delivered
    unfulfillable       no unit could ship (the order is refunded in full)
    cancelled           withdrawn (an admin cancelled the order): kept as it is
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from shop.orders.fulfillment.models import Shipment
from shop.orders.models import OrderLine


class FulfillmentStatus(StrEnum):
    REQUESTED = "requested"
    PARTIALLY_SHIPPED = "partially_shipped"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"
    UNFULFILLABLE = "unfulfillable"


def status_of(*, current: str, lines: Sequence[OrderLine],
              shipments: Sequence[Shipment]) -> FulfillmentStatus:
    """What the lines and shipments make of a request whose status is ``current``."""
    if current == FulfillmentStatus.CANCELLED:
        return FulfillmentStatus.CANCELLED
    shipped = sum(line.shipped for line in lines)
    outstanding = sum(line.outstanding for line in lines)
    if shipped == 0:
        return FulfillmentStatus.REQUESTED if outstanding else FulfillmentStatus.UNFULFILLABLE
    if outstanding:
        return FulfillmentStatus.PARTIALLY_SHIPPED
    if all(s.delivered_at is not None for s in shipments):
        return FulfillmentStatus.DELIVERED
    return FulfillmentStatus.SHIPPED
