"""The customer told once per shipment, and once per line the warehouse cannot ship.

Both go through the notification ledger (``shop.notifications.service``), keyed by the
shipment and by the warehouse's message, so a repeated task sends nothing more. The
line-refund email waits for its refund to go through (``RefundPending``, a busy retry)
so it can say the line *was* refunded; a refund that could not be asked for
automatically, or that needs a person (both flagged), is announced as coming.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shop.exceptions import BusyError
from shop.notifications.mailer import Mailer
from shop.notifications.service import send_notification
from shop.orders.fulfillment.models import Shipment, UnfulfilledLine
from shop.orders.fulfillment.status import FulfillmentStatus
from shop.orders.models import FulfillmentRequest, Order
from shop.orders.queries import load
from shop.orders.refunds.models import RefundStatus
from shop.orders.refunds.service import find_by_key

SHIPPED_KIND = "order_shipped"
LINE_REFUND_KIND = "line_refunded"
EMAIL_LEASE_SECONDS = 75.0  # above the tasks' hard time limit (60 s)


class RefundPending(BusyError):
    """The line refund has not gone through yet: the email waits for it."""


def _order(order: Order) -> dict[str, Any]:
    return {"id": str(order.id), "name": order.name, "email": order.email,
            "currency": order.currency}


def send_shipment_email(session: Session, *, order_id: uuid.UUID, shipment_id: str,
                        mailer: Mailer, sender: str) -> bool:
    """Email the customer about one shipment, once; True if this call sent it."""
    order = load(session, order_id=order_id, lines=True)
    shipment = session.scalar(select(Shipment).where(Shipment.shipment_id == shipment_id,
                                                     Shipment.order_id == order_id))
    if order is None or shipment is None:
        return False
    names = {line.sku: line.name for line in order.lines}
    context = {"order": _order(order), "shipment": {
        "carrier": shipment.carrier, "tracking_number": shipment.tracking_number,
        "tracking_url": shipment.tracking_url,
        "lines": [{"sku": x.sku, "name": names.get(x.sku, x.sku), "quantity": x.quantity}
                  for x in shipment.lines]}}
    session.commit()  # nothing pending before the ledger's claim
    return send_notification(
        session, key=f"{SHIPPED_KIND}:{shipment_id}"[:255], kind=SHIPPED_KIND,
        order_id=order.id, recipients=[order.email], template="notifications/order_shipped",
        context=context, mailer=mailer, sender=sender, lease_seconds=EMAIL_LEASE_SECONDS,
        on_sent=lambda: order.record("email.shipment_sent", detail={
            "to": order.email, "shipment_id": shipment_id}))


def send_line_refund_email(session: Session, *, order_id: uuid.UUID, message_id: str,
                           mailer: Mailer, sender: str) -> bool:
    """Email the customer about the lines of one ``cannot_fulfil``, once, after their
    refund went through; True if this call sent it."""
    order = load(session, order_id=order_id, lines=True)
    rows = list(session.scalars(select(UnfulfilledLine).where(
        UnfulfilledLine.order_id == order_id, UnfulfilledLine.message_id == message_id)
        .order_by(UnfulfilledLine.sku)))
    if order is None or not rows:
        return False
    refunded = False
    if rows[0].refund_key:
        request = find_by_key(session, order_id=order_id, key=rows[0].refund_key)
        if request is None or request.status in (RefundStatus.PENDING, RefundStatus.SENT):
            raise RefundPending(f"the refund {rows[0].refund_key} has not gone through yet")
        refunded = request.status == RefundStatus.SUCCEEDED  # else: a person sees to it
    status = session.scalar(select(FulfillmentRequest.status)
                            .where(FulfillmentRequest.order_id == order_id))
    names = {line.sku: line.name for line in order.lines}
    context = {"order": _order(order), "refunded": refunded,
               "whole_order": status == FulfillmentStatus.UNFULFILLABLE,
               "amount": sum(x.amount for x in rows),
               "lines": [{"sku": x.sku, "name": names.get(x.sku, x.sku), "quantity": x.quantity,
                          "amount": x.amount} for x in rows]}
    key = f"{LINE_REFUND_KIND}:{uuid.uuid5(uuid.NAMESPACE_URL, message_id)}"
    session.commit()
    return send_notification(
        session, key=key, kind=LINE_REFUND_KIND, order_id=order.id, recipients=[order.email],
        template="notifications/line_refunded", context=context, mailer=mailer,
        sender=sender, lease_seconds=EMAIL_LEASE_SECONDS,
        on_sent=lambda: order.record("email.line_refund_sent", detail={
            "to": order.email, "skus": [x.sku for x in rows], "refunded": refunded}))
