"""The factories write rows the schema accepts, priced and placed as checkout would."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shop.db import session_scope
from shop.messaging.models import OutboxMessage
from shop.orders.models import Order
from tests.factories import ModelFactory
from tests.factories.messaging import OutboxMessageFactory
from tests.factories.notifications import NotificationFactory
from tests.factories.orders import (
    FulfillmentRequestFactory,
    OrderFactory,
    OrderLineFactory,
    ProductFactory,
)
from tests.factories.payments import PaymentFactory, WebhookEventFactory

FACTORIES = [ProductFactory, OrderFactory, FulfillmentRequestFactory, PaymentFactory,
             WebhookEventFactory, NotificationFactory, OutboxMessageFactory]


@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f.__name__)
def test_each_factory_commits_a_row_other_sessions_see(session: Session,
                                                       factory: type[ModelFactory]) -> None:
    row: Any = factory()
    model = factory._meta.model
    with session_scope() as other:
        assert other.scalar(select(func.count()).select_from(model)) == 1
        for column in model.__table__.columns:
            if isinstance(value := getattr(row, column.key), dt.datetime):
                assert value.utcoffset() == dt.timedelta(0), column.key


def test_an_order_is_priced_from_its_lines_and_opens_with_order_placed(session: Session) -> None:
    mug, tea = ProductFactory(price=1500), ProductFactory(price=499)
    order = OrderFactory(lines=[OrderLineFactory(product=mug, quantity=2),
                                OrderLineFactory(product=tea, quantity=3)])
    session.expire_all()
    stored = session.get(Order, order.id)
    assert stored is not None
    assert [(x.sku, x.unit_price, x.line_total) for x in stored.lines] == sorted(
        [(mug.sku, 1500, 3000), (tea.sku, 499, 1497)])
    assert stored.subtotal == stored.total == 4497
    assert (stored.stage, stored.status, stored.version) == ("placed", "pending", 1)
    assert [(e.type, e.detail) for e in stored.events] == [
        ("order.placed", {"lines": 2, "total": 4497})]


def test_a_placed_order_has_its_first_step_in_the_outbox(session: Session) -> None:
    plain = OrderFactory()
    placed = OrderFactory(placed=True)
    messages = session.scalars(select(OutboxMessage)).all()
    assert [(m.name, m.payload) for m in messages] == [
        ("shop.orders.check_inventory", {"order_id": str(placed.id)})]
    assert plain.id != placed.id


def test_factories_build_without_a_database_and_refuse_to_write_without_session() -> None:
    order = OrderFactory.build()
    assert order.total == sum(line.line_total for line in order.lines) > 0
    with pytest.raises(RuntimeError, match="session"):
        ProductFactory()
