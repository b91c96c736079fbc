"""A shop's day for the report tests, made through the real workflow, and the facts the
tests compute their expected figures from.

Orders are placed with the factories and moved by the workflow's own steps with the
fake gateway; refunds and cancellations go through ``shop.payments.service`` and the
workflow's compensation. The steps stamp everything with the current time, so each
order's timestamps (``orders.created_at``, ``order_events.at``, ``payments.captured_at``,
``refunds.created_at``) are then moved by SQL UPDATE to the moment the scenario says:
that is the only thing the tests write by hand.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shop.orders import steps, workflow
from shop.orders.models import Order, OrderEvent, Product
from shop.orders.states import Event
from shop.payments import service as payments
from shop.payments.models import Payment, Refund
from tests.factories.orders import OrderFactory, OrderLineFactory, ProductFactory
from tests.fakes import FakeGateway

DECLINED = "pm_card_chargeDeclined"
# Timeline entries of the way to the shelf and the authorization: they happen when the
# order is placed; everything after (capture, failure, cancellation) when it settles.
EARLY_EVENTS = ("order.placed", "inventory.confirmed", "payment.authorized", "stock.reserved")


@dataclass
class Fact:
    """What the scenario did to one order, in the test's own terms."""

    currency: str
    lines: list[tuple[str, str, int, int]]  # sku, name, quantity, unit price
    placed: dt.datetime
    captured: dt.datetime | None = None
    failed: tuple[dt.datetime, str, str] | None = None  # when, step, reason
    cancelled: dt.datetime | None = None

    @property
    def total(self) -> int:
        return sum(quantity * price for _, _, quantity, price in self.lines)


@dataclass
class ShopDay:
    """Builds orders through the workflow and keeps the facts."""

    session: Session
    gateway: FakeGateway = field(default_factory=FakeGateway)
    facts: dict[uuid.UUID, Fact] = field(default_factory=dict)
    refunds: list[tuple[str, int, dt.datetime]] = field(default_factory=list)  # cur, amount, at

    def __post_init__(self) -> None:
        self.gateway.decline.add(DECLINED)

    def product(self, sku: str, *, price: int, currency: str, name: str | None = None,
                on_hand: int = 100) -> Product:
        product: Product = ProductFactory(sku=sku, name=name or f"Product {sku}", price=price,
                                          currency=currency, on_hand=on_hand)
        return product

    def place(self, lines: dict[str, int], *, at: dt.datetime, name: str | None = None,
              payment_method: str = "pm_card_visa") -> Order:
        products = {sku: self.session.get(Product, sku) for sku in lines}
        currency = {p.currency for p in products.values() if p is not None}.pop()
        order: Order = OrderFactory(
            currency=currency, payment_method=payment_method, placed=True,
            lines=[OrderLineFactory(product=products[sku], quantity=quantity)
                   for sku, quantity in lines.items()],
            **({"name": name} if name else {}))
        self.facts[order.id] = Fact(currency=currency, placed=at, lines=[
            (line.sku, line.name, line.quantity, line.unit_price) for line in order.lines])
        return order

    def sell(self, lines: dict[str, int], *, placed: dt.datetime,
             captured: dt.datetime | None = None, name: str | None = None) -> uuid.UUID:
        """An order that goes all the way: its payment is captured at ``captured``."""
        captured = captured or placed
        order_id = self.place(lines, at=placed, name=name).id
        self.run(order_id)
        self.stamp(order_id, placed=placed, settled=captured)
        self.facts[order_id].captured = captured
        return order_id

    def run(self, order_id: uuid.UUID) -> None:
        steps.check_inventory(self.session, order_id=order_id)
        steps.charge_payment(self.session, order_id=order_id, gateway=self.gateway, owner="t")
        steps.reserve_stock(self.session, order_id=order_id)
        steps.capture_payment(self.session, order_id=order_id, gateway=self.gateway, owner="t")

    def decline(self, lines: dict[str, int], *, at: dt.datetime) -> uuid.UUID:
        """An order whose card is declined at ``at``."""
        order_id = self.place(lines, at=at, payment_method=DECLINED).id
        self.run(order_id)
        self.stamp(order_id, placed=at, settled=at)
        self.facts[order_id].failed = (at, "payment", "card_declined")
        return order_id

    def short_at_inventory(self, lines: dict[str, int], *, at: dt.datetime) -> uuid.UUID:
        order_id = self.place(lines, at=at).id
        self.run(order_id)
        self.stamp(order_id, placed=at, settled=at)
        self.facts[order_id].failed = (at, "inventory", "out_of_stock")
        return order_id

    def race_for_last_unit(self, sku: str, *, at: dt.datetime) -> tuple[uuid.UUID, uuid.UUID]:
        """Two orders for the last unit pass the inventory check; the second loses it at
        reservation, and its authorization is voided by the compensation's task."""
        first, second = (self.place({sku: 1}, at=at).id for _ in range(2))
        for order_id in (first, second):
            steps.check_inventory(self.session, order_id=order_id)
            steps.charge_payment(self.session, order_id=order_id, gateway=self.gateway,
                                 owner="t")
        self.run(first)
        steps.reserve_stock(self.session, order_id=second)
        assert steps.release_payment(self.session, order_id=second, attempt=1,
                                     gateway=self.gateway, owner="t")
        for order_id in (first, second):
            self.stamp(order_id, placed=at, settled=at)
        self.facts[first].captured = at
        self.facts[second].failed = (at, "reservation", "out_of_stock")
        return first, second

    def cancel(self, order_id: uuid.UUID, *, at: dt.datetime) -> None:
        """Cancel as an admin would: compensation, the transition, then the release task
        (which refunds a captured payment in full)."""
        order = self.session.get(Order, order_id, populate_existing=True)
        assert order is not None
        captured = self.facts[order_id].captured is not None
        workflow.compensate(self.session, order=order)
        workflow.advance(self.session, order=order, event=Event.CANCELLED, actor="admin")
        self.session.commit()
        if captured:
            assert steps.release_payment(self.session, order_id=order_id, attempt=1,
                                         gateway=self.gateway, owner="t")
            fact = self.facts[order_id]
            self.refunds.append((fact.currency, fact.total, at))
            self._stamp_refunds(order_id, at)
        self.session.execute(update(OrderEvent).where(
            OrderEvent.order_id == order_id,
            OrderEvent.type.in_(["order.cancelled", "payment.refunded"])).values(at=at))
        self.session.commit()
        self.facts[order_id].cancelled = at

    def refund(self, order_id: uuid.UUID, amount: int, *, at: dt.datetime) -> None:
        """A partial refund made at the provider and recorded as the webhook records it."""
        payment = self._payment(order_id)
        assert payment.reference is not None
        self.gateway.refund(payment.reference, amount=amount, idempotency_key=f"r-{at}")
        state = self.gateway.retrieve(payment.reference)
        payments.record(self.session, result=payments.Result(
            outcome=payments.Outcome.REFUNDED, payment_id=payment.id,
            reference=payment.reference, captured=state.amount_received,
            refunded=state.amount_refunded))
        self.session.commit()
        self._stamp_refunds(order_id, at)
        self.refunds.append((self.facts[order_id].currency, amount, at))

    def stamp(self, order_id: uuid.UUID, *, placed: dt.datetime, settled: dt.datetime) -> None:
        """Move the order's timestamps to the scenario's moments (SQL UPDATE)."""
        session = self.session
        session.execute(update(Order).where(Order.id == order_id)
                        .values(created_at=placed, updated_at=settled)
                        .execution_options(synchronize_session=False))
        events = update(OrderEvent).where(OrderEvent.order_id == order_id)
        session.execute(events.where(OrderEvent.type.in_(EARLY_EVENTS)).values(at=placed))
        session.execute(events.where(OrderEvent.type.not_in(EARLY_EVENTS)).values(at=settled))
        session.execute(update(Payment).where(Payment.order_id == order_id)
                        .values(created_at=placed))
        session.execute(update(Payment).where(Payment.order_id == order_id,
                                              Payment.captured_at.is_not(None))
                        .values(captured_at=settled))
        session.commit()

    def _stamp_refunds(self, order_id: uuid.UUID, at: dt.datetime) -> None:
        payment = self._payment(order_id)
        newest = self.session.scalar(select(Refund.id).where(Refund.payment_id == payment.id)
                                     .order_by(Refund.id.desc()).limit(1))
        self.session.execute(update(Refund).where(Refund.id == newest).values(created_at=at))
        self.session.commit()

    def _payment(self, order_id: uuid.UUID) -> Payment:
        payment = self.session.scalar(select(Payment).where(Payment.order_id == order_id)
                                      .execution_options(populate_existing=True))
        assert payment is not None
        return payment
