"""The daily report's fulfillment figures (issue 22): shipments and units shipped during
the day, refunds by reason, and confirmed orders not shipped N days on. SQLite and
PostgreSQL, a recording fake gateway."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shop.orders.fulfillment import service
from shop.orders.fulfillment.models import Shipment
from shop.orders.provider import converge
from shop.orders.refunds.models import RefundRequest
from shop.payments.models import Payment, Refund
from shop.reports import figures, rendering
from shop.reports.days import local_day
from shop.reports.shipping import refunds_by_reason, unshipped
from tests.factories.fulfillment import cannot_fulfil, confirmed, parsed, shipped
from tests.factories.orders import ProductFactory
from tests.fakes import FakeGateway

DAY = dt.date(2026, 12, 3)
NOON = dt.datetime(2026, 12, 3, 12, tzinfo=dt.UTC)
NOW = dt.datetime(2026, 12, 4, 0, 15, tzinfo=dt.UTC)


def test_the_report_counts_the_days_shipments_refunds_by_reason_and_late_orders(
        session: Session, gateway: FakeGateway) -> None:
    ProductFactory(sku="MUG", price=1500, on_hand=30)
    ProductFactory(sku="TEE", price=700, on_hand=10)
    shipped_one, request_one = confirmed(session, gateway)
    short_one, request_short = confirmed(session, gateway)
    late_one, _ = confirmed(session, gateway)
    fresh_one, _ = confirmed(session, gateway)
    for body in (shipped(shipped_one, request_one, {"MUG": 2}, shipment_id="a"),
                 shipped(shipped_one, request_one, {"MUG": 1, "TEE": 1}, shipment_id="b"),
                 shipped(short_one, request_short, {"MUG": 3}, shipment_id="c"),
                 cannot_fulfil(short_one, request_short, {"TEE": 1}, reason="damaged")):
        service.apply(session, message=parsed(body))
    [refund] = session.scalars(select(RefundRequest)).all()
    converge.refund_lines(session, refund_id=refund.id, gateway=gateway, owner="r")
    session.execute(update(Shipment).values(shipped_at=NOON))
    session.execute(update(Shipment).where(Shipment.shipment_id == "c")
                    .values(shipped_at=NOON - dt.timedelta(days=1)))  # the day before
    session.execute(update(Refund).values(created_at=NOON))
    session.execute(update(Payment).values(captured_at=NOW - dt.timedelta(days=5)))
    session.execute(update(Payment).where(Payment.order_id == fresh_one)
                    .values(captured_at=NOW - dt.timedelta(days=1)))
    session.commit()

    data = figures.build(session, day=DAY, timezone="UTC", low_stock_below=5, now=NOW,
                         unshipped_after_days=3)

    shipping = data["fulfillment"]
    assert (shipping["shipments"], shipping["units_shipped"]) == (2, 4)
    reason = session.scalar(select(Refund.reason))  # as the line-refund ledger names it
    assert shipping["refunds_by_reason"] == [{"currency": "USD", "reason": reason,
                                              "refunds": 1, "amount": 700}]
    assert shipping["unshipped"]["count"] == 1  # shipped and short_one shipped all they could
    assert [o["id"] for o in shipping["unshipped"]["orders"]] == [str(late_one)]
    assert unshipped(session, now=NOW, days=0)["count"] == 2  # the fresh one too
    assert refunds_by_reason(session, local_day(DAY + dt.timedelta(days=1), "UTC")) == []
    text = rendering.text(data)
    assert "Shipments      2" in text
    assert "Units shipped  4" in text
    assert str(late_one) in text
    assert str(late_one) in rendering.page(data)
