"""What the report checks as it is built: low stock, and a consistency section that is
empty on a healthy shop.

These are snapshots at build time over every order, not figures of the day: an
anomaly stays in each day's report until someone resolves it. Each check is one
aggregate query for the count and one bounded query for a sample of the orders.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Select, exists, func, literal, select
from sqlalchemy.orm import QueryableAttribute, Session
from sqlalchemy.sql.elements import ColumnElement

from shop.notifications.models import Notification
from shop.orders.attention import Kind
from shop.orders.models import Attention, FulfillmentRequest, Order, Product
from shop.orders.states import OrderStatus, Stage
from shop.payments.models import Payment, PaymentStatus

SAMPLE = 20  # orders listed per check; the count covers them all
LOW_STOCK_LISTED = 100
STALE_AUTHORIZATION = dt.timedelta(days=5)  # card authorizations lapse after about 7 days
# Beyond what the sweeper (3 resumes, 5 minutes apart) and 3-D Secure's timeout
# (an hour) leave in flight on a healthy shop.
STUCK_AFTER = dt.timedelta(hours=2)
IN_FLIGHT = sorted({stage.status.value for stage in Stage if not stage.terminal})
MONEY_TAKEN = [PaymentStatus.CAPTURED.value, PaymentStatus.PARTIALLY_REFUNDED.value]

# name: what it means (for people reading the report)
CHECKS: dict[str, str] = {
    "captured_not_confirmed": "Payment captured, order not confirmed by that payment",
    "confirmed_without_capture": "Order confirmed, no payment captured",
    "stale_authorizations": "Authorization older than 5 days, not captured",
    "stuck_orders": "Order in flight, not moved for 2 hours",
    "paid_followup_failed": "Paid order whose confirmation email or fulfillment failed",
    "paid_followup_missing": "Paid order with no confirmation email sent or no warehouse "
                             "request, and no flag, 2 hours after confirmation",
    "money_needs_a_person": "Money the shop's ledger and the provider disagree on, a payment "
                            "the shop did not create, or one the provider refuses to show",
}
CONFIRMATION_KIND = "order_confirmation"  # the confirmation email's ledger kind
PERSON_KINDS = [Kind.LEDGER_MISMATCH.value, Kind.UNRECOGNIZED_PAYMENT.value,
                Kind.PROVIDER_ERROR.value]


def low_stock(session: Session, *, below: int) -> dict[str, Any]:
    """Products whose available units (on hand minus reserved) are under ``below``."""
    available = (Product.on_hand - Product.reserved).label("available")
    condition = (Product.on_hand - Product.reserved) < below
    total = session.scalar(select(func.count()).select_from(Product).where(condition))
    rows = session.execute(select(Product.sku, Product.name, available)
                           .where(condition).order_by(available, Product.sku)
                           .limit(LOW_STOCK_LISTED))
    return {"threshold": below, "count": int(total or 0),
            "products": [{"sku": s, "name": n, "available": int(a)} for s, n, a in rows]}


def consistency(session: Session, *, now: dt.datetime) -> dict[str, dict[str, Any]]:
    """Every check's count and a sample of its orders, oldest first."""
    queries = {
        "captured_not_confirmed": _captured_not_confirmed(),
        "confirmed_without_capture": _confirmed_without_capture(),
        "stale_authorizations": _stale_authorizations(now - STALE_AUTHORIZATION),
        "stuck_orders": _stuck_orders(now - STUCK_AFTER),
        "paid_followup_failed": _paid_followup_failed(),
        "paid_followup_missing": _paid_followup_missing(now - STUCK_AFTER),
        "money_needs_a_person": _money_needs_a_person(),
    }
    return {name: _run(session, query) for name, query in queries.items()}


def _run(session: Session, query: Select[*tuple[Any, ...]]) -> dict[str, Any]:
    count = session.scalar(select(func.count()).select_from(query.subquery()))
    if not count:
        return {"count": 0, "orders": []}
    rows = session.execute(query.order_by(query.selected_columns.since, Order.id).limit(SAMPLE))
    return {"count": int(count), "orders": [_order(row) for row in rows]}


def _order(row: Any) -> dict[str, Any]:
    order_id, name, email, status, currency, total, since, detail = row
    return {"id": str(order_id), "name": name, "email": email, "status": status,
            "currency": currency, "total": int(total), "since": _iso(since), "detail": detail}


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


Column = ColumnElement[Any] | QueryableAttribute[Any]


def _columns(since: Column, detail: Column) -> Select[*tuple[Any, ...]]:
    return select(Order.id, Order.name, Order.email, Order.status, Order.currency, Order.total,
                  since.label("since"), detail.label("detail"))


def _captured_not_confirmed() -> Select[*tuple[Any, ...]]:
    """Money kept for an order that is not confirmed, or not by this attempt (a double
    charge)."""
    return (_columns(Payment.captured_at, Payment.status)
            .join(Payment, Payment.order_id == Order.id)
            .where(Payment.status.in_(MONEY_TAKEN),
                   (Order.status != OrderStatus.CONFIRMED.value)
                   | (Payment.attempt != Order.payment_attempt)))


def _confirmed_without_capture() -> Select[*tuple[Any, ...]]:
    captured = exists().where(Payment.order_id == Order.id, Payment.amount_captured > 0)
    return (_columns(Order.updated_at, literal("no capture"))
            .where(Order.status == OrderStatus.CONFIRMED.value, ~captured))


def _stale_authorizations(before: dt.datetime) -> Select[*tuple[Any, ...]]:
    return (_columns(Payment.created_at, Payment.status)
            .join(Payment, Payment.order_id == Order.id)
            .where(Payment.status == PaymentStatus.AUTHORIZED.value,
                   Payment.created_at < before))


def _stuck_orders(before: dt.datetime) -> Select[*tuple[Any, ...]]:
    return (_columns(Order.updated_at, Order.stage)
            .where(Order.status.in_(IN_FLIGHT), Order.updated_at < before))


def _paid_followup_failed() -> Select[*tuple[Any, ...]]:
    return (_columns(Attention.created_at, Attention.kind)
            .join(Attention, Attention.order_id == Order.id)
            .where(Attention.kind.in_([Kind.EMAIL_FAILED.value, Kind.FULFILLMENT_FAILED.value]),
                   Attention.resolved_at.is_(None),
                   Order.status == OrderStatus.CONFIRMED.value))


def _paid_followup_missing(before: dt.datetime) -> Select[*tuple[Any, ...]]:
    """However old: a confirmed order whose email or warehouse request never happened and
    that no flag shows (the sweeper's give-up flags it; this catches what slips past)."""
    emailed = exists().where(Notification.order_id == Order.id,
                             Notification.kind == CONFIRMATION_KIND,
                             Notification.status == "sent")
    requested = exists().where(FulfillmentRequest.order_id == Order.id)
    flagged = exists().where(Attention.order_id == Order.id, Attention.resolved_at.is_(None),
                             Attention.kind.in_([Kind.EMAIL_FAILED.value,
                                                 Kind.FULFILLMENT_FAILED.value]))
    return (_columns(Order.updated_at, literal("no email or no warehouse request"))
            .where(Order.status == OrderStatus.CONFIRMED.value, Order.updated_at < before,
                   ~(emailed & requested), ~flagged))


def _money_needs_a_person() -> Select[*tuple[Any, ...]]:
    """Open items about money a person must look at, with their amounts."""
    return (_columns(Attention.created_at, Attention.message)
            .join(Attention, Attention.order_id == Order.id)
            .where(Attention.kind.in_(PERSON_KINDS), Attention.resolved_at.is_(None)))
