"""The report's fulfillment figures: what shipped during the day, refunds by reason,
and confirmed orders still not shipped N days on (as of the build, like the checks).

All GROUP BYs and counts in the database; money per currency, never summed across.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from shop.orders.fulfillment.models import Shipment, ShipmentLine
from shop.orders.fulfillment.status import FulfillmentStatus
from shop.orders.models import FulfillmentRequest, Order
from shop.orders.states import OrderStatus
from shop.payments.models import Payment, Refund
from shop.reports.days import Window

LISTED = 20
# Still owed to the customer: nothing (or not everything) has left the shelf.
NOT_SHIPPED = (FulfillmentStatus.REQUESTED.value, FulfillmentStatus.PARTIALLY_SHIPPED.value)


def figures(session: Session, window: Window, *, now: dt.datetime,
            unshipped_after_days: int) -> dict[str, Any]:
    """The day's shipments and units shipped, its refunds by reason, and the orders
    confirmed more than ``unshipped_after_days`` days before ``now`` that have not shipped."""
    within = (Shipment.shipped_at >= window.start) & (Shipment.shipped_at < window.end)
    shipments = session.scalar(select(func.count()).select_from(Shipment).where(within))
    units = session.scalar(select(func.sum(ShipmentLine.quantity))
                           .join(Shipment, Shipment.id == ShipmentLine.shipment_pk)
                           .where(within))
    return {"shipments": int(shipments or 0), "units_shipped": int(units or 0),
            "refunds_by_reason": refunds_by_reason(session, window),
            "unshipped": unshipped(session, now=now, days=unshipped_after_days)}


def refunds_by_reason(session: Session, window: Window) -> list[dict[str, Any]]:
    """Refunds recorded during the day, per currency and reason."""
    rows = session.execute(
        select(Refund.currency, Refund.reason, func.count(), func.sum(Refund.amount))
        .where(Refund.created_at >= window.start, Refund.created_at < window.end)
        .group_by(Refund.currency, Refund.reason))
    found = [{"currency": str(c), "reason": str(r), "refunds": int(n or 0),
              "amount": int(a or 0)} for c, r, n, a in rows]
    return sorted(found, key=lambda x: (x["currency"], -x["amount"], x["reason"]))


def unshipped(session: Session, *, now: dt.datetime, days: int) -> dict[str, Any]:
    """Confirmed orders captured before ``now - days`` with nothing or not everything shipped."""
    cutoff = now - dt.timedelta(days=days)
    captured = (select(Payment.order_id, func.min(Payment.captured_at).label("at"))
                .where(Payment.captured_at.is_not(None)).group_by(Payment.order_id).subquery())
    waiting = ~exists().where(FulfillmentRequest.order_id == Order.id,
                              FulfillmentRequest.status.not_in(NOT_SHIPPED))
    query = (select(Order.id, Order.email, Order.total, Order.currency, captured.c.at)
             .join(captured, captured.c.order_id == Order.id)
             .where(Order.status == OrderStatus.CONFIRMED, captured.c.at < cutoff, waiting))
    count = session.scalar(select(func.count()).select_from(query.subquery()))
    rows: Any = session.execute(query.order_by(captured.c.at).limit(LISTED))
    return {"days": days, "count": int(count or 0), "orders": [
        {"id": str(i), "email": e, "total": int(t), "currency": c,
         "confirmed_at": at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")}
        for i, e, t, c, at in rows]}
