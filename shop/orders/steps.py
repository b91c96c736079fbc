"""The workflow's step use cases (split from ``service.py`` to keep modules small).

Each is safe to run twice, concurrently, or again after a crash at any line:
it reloads the order and returns at once unless the order is at its stage.
Steps that call the payment provider first take a short lease on the order, so two
copies of one message do not both talk to the provider; the lease ends by itself.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shop.db import utcnow
from shop.messaging.service import enqueue_event, enqueue_task
from shop.notifications.mailer import Mailer
from shop.notifications.service import send_notification
from shop.orders.models import FulfillmentRequest, Order
from shop.orders.states import Event, Stage, Step
from shop.orders.workflow import advance, load, release_lines, reserve_lines, shortages
from shop.payments import service as payments
from shop.payments.gateway import PaymentGateway
from shop.payments.models import Payment, PaymentStatus

log = logging.getLogger(__name__)
T = TypeVar("T")

EVENTS_EXCHANGE = "shop.events"
FULFILLMENT_ROUTING_KEY = "order.fulfillment_requested"
VOID_TASK = "shop.payments.void_payment"
LEASE_SECONDS = 30.0  # above the payment tasks' hard time limit (25 s)
EMAIL_LEASE_SECONDS = 75.0  # above the tasks' hard time limit (60 s): a send cannot outlive it


class OrderBusy(Exception):
    """Another copy of a step holds the order's lease; try again shortly."""


def claim_lease(session: Session, *, order_id: uuid.UUID, owner: str,
                seconds: float = LEASE_SECONDS) -> None:
    """Take the order's lease (or ``OrderBusy``); committed at once."""
    now = utcnow()
    taken = session.execute(
        update(Order)
        .where(Order.id == order_id,
               or_(Order.lease_until.is_(None), Order.lease_until < now,
                   Order.lease_owner == owner))
        .values(lease_owner=owner, lease_until=now + dt.timedelta(seconds=seconds))
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if taken.rowcount != 1:  # type: ignore[attr-defined]
        raise OrderBusy(str(order_id))


@contextmanager
def leased(session: Session, *, order_id: uuid.UUID, owner: str) -> Iterator[None]:
    """Hold the order's lease for the block; give it back at once if the block fails."""
    claim_lease(session, order_id=order_id, owner=owner)
    try:
        yield
    except BaseException:
        session.rollback()
        session.execute(
            update(Order).where(Order.id == order_id, Order.lease_owner == owner)
            .values(lease_owner=None, lease_until=None)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        raise


def _end_lease(order: Order) -> None:
    order.lease_owner = None
    order.lease_until = None


def _at(session: Session, *, order_id: uuid.UUID, stage: Stage) -> Order | None:
    """The order if it is at ``stage``; ``None`` means this step's work is done or moot."""
    order = load(session, order_id=order_id)
    return order if order is not None and order.current_stage is stage else None


def _with_provider(
    session: Session, *, order: Order, owner: str, gateway: PaymentGateway,
    call: Callable[[Payment], T],
) -> tuple[Order, Payment, T] | None:
    """Run ``call`` against the provider under the order's lease, outside any transaction.

    Returns the reloaded order (still at its stage), the attempt's payment row and
    the call's result, or ``None`` if the order moved on meanwhile.
    """
    stage = order.current_stage
    with leased(session, order_id=order.id, owner=owner):
        payment = payments.open_attempt(
            session, order_id=order.id, attempt=order.payment_attempt, amount=order.total,
            currency=order.currency, provider=gateway.name)
        result = call(payment)
    session.expire_all()
    fresh = _at(session, order_id=order.id, stage=stage)
    return None if fresh is None else (fresh, payment, result)


def check_inventory(session: Session, *, order_id: uuid.UUID) -> None:
    """Fail the order before any payment if the shelf cannot cover it."""
    order = _at(session, order_id=order_id, stage=Stage.PLACED)
    if order is None:
        return
    short = shortages(session, order=order)
    if short:
        advance(session, order=order, event=Event.INVENTORY_SHORT, detail={"skus": short},
                failure=(Step.INVENTORY, "out_of_stock", f"Not enough stock: {', '.join(short)}"))
    else:
        advance(session, order=order, event=Event.INVENTORY_CONFIRMED)
    session.commit()


def charge_payment(session: Session, *, order_id: uuid.UUID, gateway: PaymentGateway,
                   owner: str) -> None:
    """Authorize the order's total (manual capture); a decline fails the order."""
    order = _at(session, order_id=order_id, stage=Stage.IN_STOCK)
    if order is None:
        return
    method = order.payment_method
    outcome = _with_provider(session, order=order, owner=owner, gateway=gateway, call=lambda p:
                             payments.authorize(session, payment=p, payment_method=method,
                                                gateway=gateway))
    if outcome is None:
        return
    order, _, result = outcome
    detail = {"reference": result.reference, "attempt": order.payment_attempt}
    if result.outcome is payments.Outcome.AUTHORIZED:
        payments.record(session, payment_id=result.payment_id, status=PaymentStatus.AUTHORIZED)
        advance(session, order=order, event=Event.PAYMENT_AUTHORIZED, detail=detail)
    elif result.outcome is payments.Outcome.REQUIRES_ACTION:
        payments.record(session, payment_id=result.payment_id,
                        status=PaymentStatus.REQUIRES_ACTION)
        advance(session, order=order, event=Event.PAYMENT_REQUIRES_ACTION, detail=detail)
    else:
        payments.record(session, payment_id=result.payment_id, status=PaymentStatus.FAILED,
                        decline_code=result.reason)
        advance(session, order=order, event=Event.PAYMENT_FAILED, detail=detail,
                failure=(Step.PAYMENT, result.reason or "card_declined", result.message or ""))
    _end_lease(order)
    session.commit()


def reserve_stock(session: Session, *, order_id: uuid.UUID) -> None:
    """Hold the units for every line, or fail the order and release its authorization."""
    order = _at(session, order_id=order_id, stage=Stage.AUTHORIZED)
    if order is None:
        return
    if reserve_lines(session, order=order):
        advance(session, order=order, event=Event.STOCK_RESERVED)
        session.commit()
        return
    session.rollback()
    order = _at(session, order_id=order_id, stage=Stage.AUTHORIZED)
    if order is None:
        return
    _void_later(session, order=order)
    advance(session, order=order, event=Event.STOCK_SHORT,
            failure=(Step.RESERVATION, "out_of_stock", "Stock ran out before it was reserved"))
    session.commit()


def capture_payment(session: Session, *, order_id: uuid.UUID, gateway: PaymentGateway,
                    owner: str) -> None:
    """Take the authorized money, then confirm the order (and fan out)."""
    order = _at(session, order_id=order_id, stage=Stage.RESERVED)
    if order is None:
        return
    total = order.total
    outcome = _with_provider(session, order=order, owner=owner, gateway=gateway, call=lambda p:
                             payments.capture(payment=p, amount=total, gateway=gateway))
    if outcome is None:
        return
    order, payment, state = outcome
    detail = {"reference": state.reference, "amount": state.amount_received}
    if state.status == "succeeded":
        payments.record(session, payment_id=payment.id, status=PaymentStatus.CAPTURED)
        advance(session, order=order, event=Event.PAYMENT_CAPTURED, detail=detail)
    else:
        release_lines(session, order=order)
        _void_later(session, order=order)
        payments.record(session, payment_id=payment.id, status=PaymentStatus.FAILED)
        advance(session, order=order, event=Event.PAYMENT_FAILED, detail=detail, failure=(
            Step.PAYMENT, "capture_failed", f"The authorization could not be captured "
            f"(intent is {state.status})"))
    _end_lease(order)
    session.commit()


def send_confirmation(session: Session, *, order_id: uuid.UUID, mailer: Mailer,
                      sender: str) -> None:
    """Email the customer once; the ledger turns repeats into no-ops."""
    order = _at(session, order_id=order_id, stage=Stage.CONFIRMED)
    if order is None:
        return
    context = {"order": {
        "id": str(order.id), "name": order.name, "email": order.email,
        "currency": order.currency, "subtotal": order.subtotal, "total": order.total,
        "shipping_address": order.shipping_address,
        "lines": [{"sku": x.sku, "name": x.name, "quantity": x.quantity,
                   "unit_price": x.unit_price, "line_total": x.line_total}
                  for x in order.lines],
    }}
    sent = send_notification(
        session, key=f"order_confirmation:{order.id}", kind="order_confirmation",
        order_id=order.id, recipients=[order.email],
        template="notifications/order_confirmation", context=context, mailer=mailer,
        sender=sender, lease_seconds=EMAIL_LEASE_SECONDS)
    if sent:
        order = load(session, order_id=order_id)
        assert order is not None
        order.record("email.confirmation_sent", detail={"to": order.email})
        session.commit()


def request_fulfillment(session: Session, *, order_id: uuid.UUID) -> None:
    """Record the warehouse request and publish it once, via the outbox."""
    order = _at(session, order_id=order_id, stage=Stage.CONFIRMED)
    if order is None:
        return
    if session.scalar(select(FulfillmentRequest.id).where(
            FulfillmentRequest.order_id == order_id)) is not None:
        return
    request = FulfillmentRequest(id=uuid.uuid4(), order_id=order.id)
    session.add(request)
    enqueue_event(session, exchange=EVENTS_EXCHANGE, routing_key=FULFILLMENT_ROUTING_KEY,
                  message_id=request.id, body={
                      "message_id": str(request.id), "order_id": str(order.id),
                      "email": order.email, "name": order.name,
                      "lines": [{"sku": x.sku, "name": x.name, "quantity": x.quantity}
                                for x in order.lines],
                      "shipping_address": order.shipping_address,
                  })
    order.record("fulfillment.requested", detail={"message_id": str(request.id)})
    try:
        session.commit()
    except IntegrityError:  # a concurrent copy recorded it first
        session.rollback()


def fail_step(session: Session, *, order_id: uuid.UUID, step: Step, reason: str,
              message: str) -> bool:
    """Stop an order whose step cannot go on: no stock held, no money kept."""
    order = load(session, order_id=order_id)
    if order is None or order.current_stage.terminal:
        return False
    if order.current_stage is Stage.RESERVED:
        release_lines(session, order=order)
    if order.current_stage is not Stage.PLACED:
        _void_later(session, order=order)
    advance(session, order=order, event=Event.STEP_FAILED, failure=(step, reason, message))
    _end_lease(order)
    session.commit()
    return True


def _void_later(session: Session, *, order: Order) -> None:
    enqueue_task(session, name=VOID_TASK,
                 kwargs={"order_id": str(order.id), "attempt": order.payment_attempt})


def note_problem(session: Session, *, order_id: uuid.UUID, type_: str, message: str) -> None:
    """Put a problem on a confirmed order's timeline without changing its status."""
    order = load(session, order_id=order_id)
    if order is not None:
        order.record(type_, detail={"message": message})
        session.commit()
