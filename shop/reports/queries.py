"""The report's SQL: every figure is a GROUP BY in the database, never orders in Python.

Each function takes a ``Window`` (a local day as UTC instants) and returns a few small
rows of aggregates. Timestamps are compared with bound UTC instants only, so SQLite
and PostgreSQL group exactly the same rows. Money is summed per currency and never
across currencies. The tables belong to the orders and payments domains; the report
only reads them.

When each thing counts:
- an order is *placed* when it is created;
- it is *confirmed*, *failed* or *cancelled* when its timeline records that move (an
  order that failed, was retried and failed again the same day counts once);
- a *sale* (gross sales, units, products, hours) belongs to the day its payment was
  captured; a *refund* to the day it was recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, case, distinct, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from shop.orders.models import Order, OrderEvent, OrderLine, Product
from shop.orders.states import TRANSITIONS, Event, Stage
from shop.payments.models import Payment, Refund
from shop.reports.days import Hour, Window

# The timeline entries that move an order to ``failed`` (and carry its step and reason).
FAILING_EVENTS = sorted({event.value for (_, event), stage in TRANSITIONS.items()
                         if stage is Stage.FAILED})
CONFIRMED_EVENT = Event.PAYMENT_CAPTURED.value
CANCELLED_EVENT = Event.CANCELLED.value


@dataclass(frozen=True, slots=True)
class OrderCounts:
    placed: int
    confirmed: int
    failed: int
    cancelled: int


@dataclass(frozen=True, slots=True)
class Failure:
    step: str
    reason: str
    orders: int


@dataclass(frozen=True, slots=True)
class Money:
    """Count and sum of one currency's captures (or refunds)."""

    currency: str
    count: int
    amount: int


@dataclass(frozen=True, slots=True)
class ProductSales:
    sku: str
    name: str
    currency: str
    orders: int
    units: int
    revenue: int


@dataclass(frozen=True, slots=True)
class HourSales:
    hour: int  # index into the window's hours
    currency: str
    count: int
    amount: int


def _within(column: Any, window: Window) -> ColumnElement[bool]:
    result: ColumnElement[bool] = (column >= window.start) & (column < window.end)
    return result


def _int(value: Any) -> int:
    """A SUM or COUNT as an int (PostgreSQL sums BIGINT as NUMERIC)."""
    return int(value or 0)


def order_counts(session: Session, window: Window) -> OrderCounts:
    """Orders placed, confirmed, failed and cancelled during the day."""
    placed = session.scalar(select(func.count()).select_from(Order)
                            .where(_within(Order.created_at, window)))
    failing = OrderEvent.type.in_(FAILING_EVENTS) & _step().is_not(None)

    def orders_where(condition: ColumnElement[bool]) -> ColumnElement[Any]:
        return func.count(distinct(case((condition, OrderEvent.order_id))))

    moved = session.execute(
        select(orders_where(OrderEvent.type == CONFIRMED_EVENT), orders_where(failing),
               orders_where(OrderEvent.type == CANCELLED_EVENT))
        .where(_within(OrderEvent.at, window),
               OrderEvent.type.in_([CONFIRMED_EVENT, CANCELLED_EVENT, *FAILING_EVENTS]))
    ).one()
    return OrderCounts(placed=_int(placed), confirmed=_int(moved[0]), failed=_int(moved[1]),
                       cancelled=_int(moved[2]))


def _step() -> ColumnElement[str]:
    step: ColumnElement[str] = OrderEvent.detail["step"].as_string()
    return step


def failures(session: Session, window: Window) -> list[Failure]:
    """Orders that failed during the day, by failed step and reason."""
    step, reason = _step(), OrderEvent.detail["reason"].as_string()
    inner = (select(step.label("step"), reason.label("reason"),
                    OrderEvent.order_id.label("order_id"))
             .where(_within(OrderEvent.at, window), OrderEvent.type.in_(FAILING_EVENTS),
                    step.is_not(None))
             .subquery())
    rows = session.execute(
        select(inner.c.step, func.coalesce(inner.c.reason, "unknown"),
               func.count(distinct(inner.c.order_id)))
        .group_by(inner.c.step, inner.c.reason))
    found = [Failure(step=str(s), reason=str(r), orders=_int(n)) for s, r, n in rows]
    return sorted(found, key=lambda f: (-f.orders, f.step, f.reason))


def sales(session: Session, window: Window) -> list[Money]:
    """Captures of the day per currency: how many, and how much."""
    rows = session.execute(
        select(Payment.currency, func.count(), func.sum(Payment.amount_captured))
        .where(_within(Payment.captured_at, window))
        .group_by(Payment.currency))
    return sorted((Money(str(c), _int(n), _int(a)) for c, n, a in rows),
                  key=lambda m: m.currency)


def refunds(session: Session, window: Window) -> list[Money]:
    """Refunds recorded during the day per currency."""
    rows = session.execute(
        select(Refund.currency, func.count(), func.sum(Refund.amount))
        .where(_within(Refund.created_at, window))
        .group_by(Refund.currency))
    return sorted((Money(str(c), _int(n), _int(a)) for c, n, a in rows),
                  key=lambda m: m.currency)


def _sold_orders(window: Window) -> Select[Any]:
    """Ids of the orders whose payment was captured during the day (a semi-join)."""
    return select(Payment.order_id).where(_within(Payment.captured_at, window))


def units(session: Session, window: Window) -> int:
    """Units on the orders sold during the day."""
    return _int(session.scalar(select(func.sum(OrderLine.quantity))
                               .where(OrderLine.order_id.in_(_sold_orders(window)))))


def product_sales(session: Session, window: Window) -> list[ProductSales]:
    """Every product sold during the day, per currency: orders, units and revenue."""
    rows = session.execute(
        select(OrderLine.sku, Product.name, Order.currency, func.count(),
               func.sum(OrderLine.quantity), func.sum(OrderLine.line_total))
        .join(Order, Order.id == OrderLine.order_id)
        .join(Product, Product.sku == OrderLine.sku)
        .where(OrderLine.order_id.in_(_sold_orders(window)))
        .group_by(OrderLine.sku, Product.name, Order.currency))
    found = [ProductSales(sku=str(s), name=str(n), currency=str(c), orders=_int(o),
                          units=_int(u), revenue=_int(r)) for s, n, c, o, u, r in rows]
    return sorted(found, key=lambda p: (p.currency, -p.revenue, p.sku))


def hourly_sales(session: Session, window: Window, hours: list[Hour]) -> list[HourSales]:
    """Captures of the day per local hour and currency.

    The hour is a CASE over the hours' UTC starts, computed in Python from the zone
    database, so it is the same on SQLite and PostgreSQL and right on 23- and 25-hour
    days (where PostgreSQL's ``AT TIME ZONE`` would fold the repeated hour into one).
    """
    later = [(Payment.captured_at < hour.start, index - 1)
             for index, hour in enumerate(hours) if index > 0]
    bucket = case(*later, else_=len(hours) - 1)
    inner = (select(bucket.label("hour"), Payment.currency.label("currency"),
                    Payment.amount_captured.label("amount"))
             .where(_within(Payment.captured_at, window)).subquery())
    rows = session.execute(
        select(inner.c.hour, inner.c.currency, func.count(), func.sum(inner.c.amount))
        .group_by(inner.c.hour, inner.c.currency))
    return sorted((HourSales(_int(h), str(c), _int(n), _int(a)) for h, c, n, a in rows),
                  key=lambda s: (s.hour, s.currency))

