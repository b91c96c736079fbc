"""The workflow's step use cases (what a task does when it gives up is in giving_up.py).

Each is safe to run twice, concurrently, or again after a crash at any line: it
reloads the order and returns at once unless the order is at its stage. Steps that
call the payment provider first take a short lease on the order (committed on its
own), call the provider outside any transaction, then commit the outcome: the
lease's commit and the payment module's own small commits are the deliberate extra
commits of this module. The lease ends with the outcome's commit, or at once if the
call fails, or by itself when it runs out.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shop.db import insert_for, utcnow
from shop.exceptions import InvariantBroken
from shop.messaging.broker import EVENTS_EXCHANGE, FULFILLMENT_ROUTING_KEY
from shop.messaging.service import enqueue_event
from shop.notifications.mailer import Mailer
from shop.notifications.service import send_notification
from shop.orders import lease
from shop.orders.flow import advance, fail
from shop.orders.models import FulfillmentRequest, Order
from shop.orders.provider import converge
from shop.orders.queries import load
from shop.orders.states import Event, Stage, Step
from shop.orders.stock import reserve_lines, shortages
from shop.payments import service as payments
from shop.payments.gateway import PaymentGateway

log = logging.getLogger(__name__)

CONFIRMATION_KIND = "order_confirmation"
EMAIL_LEASE_SECONDS = 75.0  # above the tasks' hard time limit (60 s): a send cannot outlive it


def at_stage(session: Session, *, order_id: uuid.UUID, stage: Stage, lines: bool = False,
             products: bool = False, lock: bool = False) -> Order | None:
    """The order if it is at ``stage``; ``None`` means this step's work is done or moot."""
    order = load(session, order_id=order_id, lines=lines, products=products, lock=lock)
    return order if order is not None and order.current_stage is stage else None


def at_again(session: Session, *, order_id: uuid.UUID, stage: Stage,
             owner: str) -> Order | None:
    """After a provider call: the order reloaded if still at ``stage``; otherwise ``None``,
    and the lease given back (the order moved on meanwhile)."""
    session.expire_all()
    order = at_stage(session, order_id=order_id, stage=stage)
    if order is None:
        lease.release(session, order_id=order_id, owner=owner)
    return order


def check_inventory(session: Session, *, order_id: uuid.UUID) -> None:
    """Fail the order before any payment if the shelf cannot cover it."""
    order = at_stage(session, order_id=order_id, stage=Stage.PLACED, products=True)
    if order is None:
        return
    short = shortages(order)
    if short:
        fail(session, order=order, step=Step.INVENTORY, reason="out_of_stock",
             event=Event.INVENTORY_SHORT, detail={"skus": short})
    else:
        advance(session, order=order, event=Event.INVENTORY_CONFIRMED)
    session.commit()


def charge_payment(session: Session, *, order_id: uuid.UUID, gateway: PaymentGateway,
                   owner: str) -> None:
    """Authorize the order's total (manual capture); a decline or refusal fails the order."""
    order = lease.claim_at(session, order_id=order_id, stage=Stage.IN_STOCK, owner=owner)
    if order is None:
        return
    with lease.given_back_on_failure(session, order_id=order_id, owner=owner):
        payment = payments.open_attempt(
            session, order_id=order.id, attempt=order.payment_attempt, amount=order.total,
            currency=order.currency, provider=gateway.name)
        session.commit()  # the lease, the attempt's row and the message's mark, together
        converge.charge(session, order=order, payment=payment, gateway=gateway)
        lease.clear(order)
        session.commit()


def reserve_stock(session: Session, *, order_id: uuid.UUID) -> None:
    """Hold the units for every line, or fail the order and release its authorization."""
    order = at_stage(session, order_id=order_id, stage=Stage.AUTHORIZED, lines=True)
    if order is None:
        return
    if reserve_lines(session, order=order):
        advance(session, order=order, event=Event.STOCK_RESERVED)
        session.commit()
        return
    session.rollback()
    order = at_stage(session, order_id=order_id, stage=Stage.AUTHORIZED)
    if order is None:
        return
    paid = converge.current_attempt(session, order=order)
    taken = paid is not None and paid.amount_captured > paid.amount_refunded
    fail(session, order=order, step=Step.RESERVATION,  # taken: an admin retried a paid order
         reason="out_of_stock_refunded" if taken else "out_of_stock", event=Event.STOCK_SHORT)
    session.commit()


def capture_payment(session: Session, *, order_id: uuid.UUID, gateway: PaymentGateway,
                    owner: str) -> None:
    """Take the authorized money, then confirm the order (and fan out)."""
    order = lease.claim_at(session, order_id=order_id, stage=Stage.RESERVED, owner=owner)
    if order is None:
        return
    with lease.given_back_on_failure(session, order_id=order_id, owner=owner):
        payment = converge.current_attempt(session, order=order)
        if payment is None:
            raise InvariantBroken("a reserved order has an authorized attempt")
        session.commit()
        converge.capture(session, order=order, payment=payment, gateway=gateway)
        lease.clear(order)
        session.commit()


def send_confirmation(session: Session, *, order_id: uuid.UUID, mailer: Mailer,
                      sender: str) -> None:
    """Email the customer once; the ledger turns repeats into no-ops."""
    order = at_stage(session, order_id=order_id, stage=Stage.CONFIRMED, lines=True)
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
    confirmed = order
    send_notification(
        session, key=f"{CONFIRMATION_KIND}:{order.id}", kind=CONFIRMATION_KIND,
        order_id=order.id, recipients=[order.email],
        template="notifications/order_confirmation", context=context, mailer=mailer,
        sender=sender, lease_seconds=EMAIL_LEASE_SECONDS,
        on_sent=lambda: confirmed.record("email.confirmation_sent",
                                         detail={"to": confirmed.email}))


def request_fulfillment(session: Session, *, order_id: uuid.UUID) -> None:
    """Record the warehouse request and publish it once, via the outbox."""
    order = at_stage(session, order_id=order_id, stage=Stage.CONFIRMED, lines=True, lock=True)
    if order is None:  # (locked: an admin cancelling now either went first or waits)
        return
    request_id = session.execute(
        insert_for(session, FulfillmentRequest.__table__)  # type: ignore[arg-type]
        .values(id=uuid.uuid4(), order_id=order.id, status="requested", created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["order_id"])  # type: ignore[attr-defined]
        .returning(FulfillmentRequest.id)).scalar()
    if request_id is None:  # requested before, by another copy of this step
        return
    enqueue_event(session, exchange=EVENTS_EXCHANGE, routing_key=FULFILLMENT_ROUTING_KEY,
                  message_id=request_id, body={
                      "message_id": str(request_id), "order_id": str(order.id),
                      "email": order.email, "name": order.name,
                      "lines": [{"sku": x.sku, "name": x.name, "quantity": x.quantity}
                                for x in order.lines],
                      "shipping_address": order.shipping_address,
                  })
    order.record("fulfillment.requested", detail={"message_id": str(request_id)})
    try:
        session.commit()
    except IntegrityError:  # a concurrent copy recorded it first
        session.rollback()


def fail_step(session: Session, *, order_id: uuid.UUID, step: Step, reason: str,
              message: str) -> bool:
    """Stop an order whose step cannot go on: no stock held, no money kept.

    ``message`` is the internal reason (for admins); the customer reads the reason's text.
    """
    order = load(session, order_id=order_id)
    if order is None or order.current_stage.terminal:
        return False
    fail(session, order=order, step=step, reason=reason, error=message)
    lease.clear(order)
    session.commit()
    return True
