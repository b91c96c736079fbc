"""Applying the warehouse's messages: each once, by its ``message_id``, in any order.

``apply`` is one transaction: it locks the order, checks everything the message names,
then writes the effects and the ledger row (``WarehouseMessage``) together, so a
redelivery finds the row and does nothing, and a message it refuses (``Rejected``,
dead-lettered by the consumer) leaves nothing behind. What each kind does:

    shipped        the units leave the shelf (on_hand and reserved fall together), the
                   shipment is recorded, a ``delivered`` parked for it is applied, and
                   its shipping email is queued
    cannot_fulfil  the units are no longer reserved, exactly those lines are refunded
                   (the line-refund service, source ``warehouse``, no restock), on_hand
                   is set to the warehouse's count, and the line-refund email is queued
    delivered      the shipment is delivered; one the shop does not know yet, of an
                   order it knows, is parked until its ``shipped`` arrives (the two may
                   cross on the way); a shipment of another order is refused

Refused (dead-lettered, nothing written): an unknown order, an order that is not
confirmed, a request id that is not the order's, a SKU not on the order, more units than
the line has left to ship, an on_hand count for an unknown product, a shipment id
another order already has.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from shop import metrics
from shop.db import utcnow
from shop.exceptions import InvariantBroken
from shop.messaging.service import enqueue_task
from shop.orders import attention, stock
from shop.orders.fulfillment.messages import (
    CannotFulfil,
    Delivered,
    Message,
    Shipped,
    kind_of,
)
from shop.orders.fulfillment.models import (
    Shipment,
    ShipmentLine,
    UnfulfilledLine,
    WarehouseMessage,
)
from shop.orders.fulfillment.status import status_of
from shop.orders.models import FulfillmentRequest, Order, Product
from shop.orders.queries import load
from shop.orders.refunds.models import RefundSource
from shop.orders.refunds.service import LineRequest, RefundError, request_line_refund
from shop.orders.states import Stage
from shop.orders.workflow.table import TaskName

log = logging.getLogger(__name__)

APPLIED, PARKED, DUPLICATE = "applied", "parked", "duplicate"


class Rejected(Exception):
    """A message the shop refuses: it names what the shop does not know."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def refund_key(message_id: str) -> str:
    """The line-refund key of a ``cannot_fulfil``: derived from its message id."""
    return f"warehouse:{uuid.uuid5(uuid.NAMESPACE_URL, 'shop.warehouse:' + message_id)}"


def apply(session: Session, *, message: Message) -> str:
    """Apply ``message`` once and commit: ``applied``, ``parked`` or ``duplicate``;
    ``Rejected`` (with nothing written) for a message naming what the shop does not know."""
    try:
        outcome = _apply(session, message=message)
    except Rejected:
        session.rollback()
        raise
    if outcome == DUPLICATE:
        session.rollback()
    else:
        session.commit()
    return outcome


def _apply(session: Session, *, message: Message) -> str:
    if session.get(WarehouseMessage, message.message_id) is not None:
        return DUPLICATE
    order = load(session, order_id=message.order_id, lines=True, lock=True)
    if order is None:
        raise Rejected(f"unknown order {message.order_id}")
    # A concurrent copy may have committed while this one waited for the lock.
    if session.get(WarehouseMessage, message.message_id,
                   populate_existing=True) is not None:
        return DUPLICATE
    if order.current_stage is not Stage.CONFIRMED:
        raise Rejected(f"order {order.id} is {order.status}, not confirmed")
    request = session.scalar(select(FulfillmentRequest)
                             .where(FulfillmentRequest.order_id == order.id))
    if isinstance(message, Shipped):
        outcome = _shipped(session, order=order, request=request, message=message)
    elif isinstance(message, CannotFulfil):
        outcome = _cannot_fulfil(session, order=order, request=request, message=message)
    else:
        outcome = _delivered(session, order=order, message=message)
    if request is not None:
        _refresh(session, order=order, request=request)
    session.add(WarehouseMessage(
        message_id=message.message_id, kind=kind_of(message), order_id=order.id,
        shipment_id=getattr(message, "shipment_id", None), status=outcome,
        body=message.model_dump(mode="json"), received_at=utcnow(),
        applied_at=None if outcome == PARKED else utcnow()))
    counter = metrics.WAREHOUSE_MESSAGES.labels(kind=kind_of(message), outcome=outcome)
    metrics.on_commit(session, counter.inc)
    return outcome


def _check_request(request: FulfillmentRequest | None, request_id: uuid.UUID) -> None:
    if request is None or request.id != request_id:
        raise Rejected(f"unknown fulfillment request {request_id} for this order")


def _check_units(order: Order, units: dict[str, int]) -> None:
    lines = {line.sku: line for line in order.lines}
    for sku, quantity in sorted(units.items()):
        line = lines.get(sku)
        if line is None:
            raise Rejected(f"line {sku} is not on order {order.id}")
        if quantity > line.outstanding:
            raise Rejected(f"line {sku}: {quantity} units, but {line.outstanding} are left "
                           "to ship")


def _shipped(session: Session, *, order: Order, request: FulfillmentRequest | None,
             message: Shipped) -> str:
    _check_request(request, message.request_message_id)
    known = _shipment(session, shipment_id=message.shipment_id)
    if known is not None:
        if known.order_id != order.id:
            raise Rejected(f"shipment {message.shipment_id} belongs to another order")
        return DUPLICATE  # the same parcel announced again under another message id
    units = message.units()
    _check_units(order, units)
    for line in order.lines:
        line.shipped += units.get(line.sku, 0)
    try:
        stock.ship_units(session, units=units)
    except InvariantBroken as exc:
        raise Rejected(str(exc)) from exc
    shipment = Shipment(
        shipment_id=message.shipment_id, order_id=order.id, message_id=message.message_id,
        carrier=message.carrier, tracking_number=message.tracking_number,
        tracking_url=message.tracking_url, shipped_at=message.shipped_at,
        lines=[ShipmentLine(sku=sku, quantity=q) for sku, q in sorted(units.items())])
    session.add(shipment)
    session.flush()
    order.record("fulfillment.shipped", at=utcnow(), detail={
        "shipment_id": shipment.shipment_id, "carrier": shipment.carrier,
        "tracking_number": shipment.tracking_number, "tracking_url": shipment.tracking_url,
        "lines": [{"sku": sku, "quantity": q} for sku, q in sorted(units.items())]})
    _apply_parked(session, order=order, shipment=shipment)
    enqueue_task(session, name=TaskName.SEND_SHIPMENT_EMAIL,
                 kwargs={"order_id": str(order.id), "shipment_id": shipment.shipment_id})
    metrics.on_commit(session, lambda: metrics.UNITS_SHIPPED.inc(sum(units.values())))
    return APPLIED


def _apply_parked(session: Session, *, order: Order, shipment: Shipment) -> None:
    """A ``delivered`` that arrived before this shipment: applied now."""
    parked = session.scalars(select(WarehouseMessage).where(
        WarehouseMessage.order_id == order.id, WarehouseMessage.status == PARKED,
        WarehouseMessage.shipment_id == shipment.shipment_id)).all()
    for row in parked:
        delivered = Delivered.model_validate(row.body, strict=False)
        _deliver(order=order, shipment=shipment, at=delivered.delivered_at,
                 message_id=row.message_id)
        row.status, row.applied_at = APPLIED, utcnow()


def _cannot_fulfil(session: Session, *, order: Order, request: FulfillmentRequest | None,
                   message: CannotFulfil) -> str:
    _check_request(request, message.request_message_id)
    units = message.units()
    _check_units(order, units)
    unknown = set(message.on_hand) - set(session.scalars(
        select(Product.sku).where(Product.sku.in_(list(message.on_hand)))))
    if unknown:
        raise Rejected(f"on_hand names unknown products: {', '.join(sorted(unknown))}")
    prices = {line.sku: line.unit_price for line in order.lines}
    for line in order.lines:
        line.unfulfilled += units.get(line.sku, 0)
    try:
        stock.unreserve_units(session, units=units)
    except InvariantBroken as exc:
        raise Rejected(str(exc)) from exc
    key = _refund(session, order=order, message=message)
    for sku, quantity in sorted(units.items()):
        session.add(UnfulfilledLine(
            order_id=order.id, message_id=message.message_id, sku=sku, quantity=quantity,
            amount=prices[sku] * quantity, reason=message.reason, refund_key=key or ""))
    order.record("fulfillment.cannot_fulfil", at=utcnow(), detail={
        "reason": message.reason, "refund_requested": key is not None,
        "amount": sum(prices[sku] * q for sku, q in units.items()),
        "lines": [{"sku": sku, "quantity": q} for sku, q in sorted(units.items())]})
    for change in stock.correct_on_hand(session, counts=message.on_hand):
        order.record("stock.corrected", at=utcnow(), detail={**change, "by": "warehouse"})
        if change["to"] != change["counted"]:
            attention.flag(session, order_id=order.id, kind=attention.Kind.STOCK_MISMATCH,
                           message=f"The warehouse counted {change['counted']} of "
                                   f"{change['sku']}, fewer than the {change['to']} units "
                                   "reserved for orders: those orders cannot all ship")
    enqueue_task(session, name=TaskName.SEND_LINE_REFUND_EMAIL,
                 kwargs={"order_id": str(order.id), "message_id": message.message_id})
    return APPLIED


def _refund(session: Session, *, order: Order, message: CannotFulfil) -> str | None:
    """Ask the line-refund service for exactly these lines (no restock); its key.

    Refused (the units were refunded already, say by an admin): the order is flagged
    for a person instead, and the stock is released all the same."""
    key = refund_key(message.message_id)
    lines = [LineRequest(sku=x.sku, quantity=x.quantity, restock=False) for x in message.lines]
    try:
        with session.begin_nested():
            request_line_refund(session, order_id=order.id, lines=lines,
                                reason=f"warehouse: {message.reason}"[:500], key=key,
                                source=RefundSource.WAREHOUSE)
    except RefundError as exc:
        log.warning("order %s: the refund of unshippable lines was refused: %s", order.id, exc)
        attention.flag(session, order_id=order.id, kind=attention.Kind.REFUND_FAILED,
                       message=f"The warehouse cannot ship some lines, and their refund was "
                               f"refused: {exc}")
        return None
    return key


def _delivered(session: Session, *, order: Order, message: Delivered) -> str:
    shipment = _shipment(session, shipment_id=message.shipment_id)
    if shipment is None:
        order.record("fulfillment.delivery_parked", at=utcnow(),
                     internal={"shipment_id": message.shipment_id,
                               "message_id": message.message_id})
        return PARKED  # its ``shipped`` is still on the way
    if shipment.order_id != order.id:
        raise Rejected(f"shipment {message.shipment_id} belongs to another order")
    if shipment.delivered_at is not None:
        return DUPLICATE
    _deliver(order=order, shipment=shipment, at=message.delivered_at,
             message_id=message.message_id)
    return APPLIED


def _deliver(*, order: Order, shipment: Shipment, at: dt.datetime, message_id: str) -> None:
    shipment.delivered_at = at
    order.record("fulfillment.delivered", at=utcnow(),
                 detail={"shipment_id": shipment.shipment_id},
                 internal={"message_id": message_id})


def _shipment(session: Session, *, shipment_id: str) -> Shipment | None:
    return session.scalar(select(Shipment).where(Shipment.shipment_id == shipment_id))


def shipments_of(session: Session, *, order_id: uuid.UUID) -> list[Shipment]:
    return list(session.scalars(select(Shipment).where(Shipment.order_id == order_id)
                                .order_by(Shipment.shipped_at, Shipment.id)))


def _refresh(session: Session, *, order: Order, request: FulfillmentRequest) -> None:
    session.flush()
    status = status_of(current=request.status, lines=order.lines,
                       shipments=shipments_of(session, order_id=order.id))
    if status != request.status:
        order.record("fulfillment.status_changed", at=utcnow(),
                     detail={"from": request.status, "to": status.value})
        request.status = status.value
