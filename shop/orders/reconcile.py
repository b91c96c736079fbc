"""Reconciliation with the payment provider, whose view of a payment is the truth.

Beat runs ``reconcile`` every five minutes (``shop reconcile`` runs it now). A pass:

- asks about captures whose outcome is unknown (their step ran out of attempts while
  the provider did not answer) and follows the answer: captured → confirm; still
  only authorized → cancel it and fail the order; gone → fail the order;
- releases what failed or cancelled orders still hold at the provider (a void or a
  refund that ran out of attempts, or whose message was lost);
- handles webhook events whose handling ran out of attempts (the provider was down).

Each mend is written on the order's timeline and counted in the returned tally. A
provider that still does not answer leaves the item, flagged, for the next pass.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections import Counter
from collections.abc import Callable
from functools import partial

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from shop.db import utcnow
from shop.exceptions import BusyError, TransientError
from shop.orders import attention, payment_events, steps
from shop.orders.models import Attention, Order
from shop.orders.states import Stage
from shop.orders.workflow import load
from shop.payments import service as payments
from shop.payments import webhooks
from shop.payments.gateway import PaymentError, PaymentGateway
from shop.payments.models import SETTLED, Payment

log = logging.getLogger(__name__)
EVENT_GRACE_SECONDS = 300.0  # an event's own task has had this long to handle it


def reconcile(session: Session, *, gateway: PaymentGateway, owner: str,
              limit: int = 200) -> Counter[str]:
    """One pass over what the provider must settle; returns what was mended."""
    tally: Counter[str] = Counter()
    for order_id in _unknown_captures(session, limit=limit):
        _attempt(tally, "capture_settled", "capture_unknown", order_id, partial(
            settle_unknown_capture, session, order_id=order_id, gateway=gateway,
            owner=owner))
    for order_id, attempt in _held_for_nothing(session, limit=limit):
        _attempt(tally, "released", "release_pending", order_id, partial(
            steps.release_payment, session, order_id=order_id, attempt=attempt,
            gateway=gateway, owner=owner))
    stale = utcnow() - dt.timedelta(seconds=EVENT_GRACE_SECONDS)
    for event_id in webhooks.unhandled(session, older_than=stale, limit=limit):
        _attempt(tally, "event_handled", "event_pending", event_id, partial(
            _handle_event, session, event_id=event_id, gateway=gateway,
            owner=owner))
    session.commit()
    return tally


def _handle_event(session: Session, *, event_id: str, gateway: PaymentGateway,
                  owner: str) -> bool:
    return payment_events.handle(session, event_id=event_id, gateway=gateway,
                                 owner=owner) != "already_handled"


def _attempt(tally: Counter[str], done: str, pending: str, subject: uuid.UUID | str,
             mend: Callable[[], bool]) -> None:
    try:
        mended = mend()
    except (TransientError, BusyError, PaymentError) as exc:
        log.warning("reconcile: %s still %s: %s", subject, pending, exc)
        tally[pending] += 1
        return
    tally[done if mended else "unchanged"] += 1


def _unknown_captures(session: Session, *, limit: int) -> list[uuid.UUID]:
    return list(session.scalars(
        select(Attention.order_id).where(Attention.kind == attention.Kind.PAYMENT_UNKNOWN,
                                         Attention.resolved_at.is_(None))
        .order_by(Attention.created_at).limit(limit)))


def _held_for_nothing(session: Session, *, limit: int) -> list[tuple[uuid.UUID, int]]:
    """Attempts that may still hold money for an order that no longer wants them."""
    rows = session.execute(
        select(Payment.order_id, Payment.attempt).join(Order, Order.id == Payment.order_id)
        .where(Payment.status.not_in([s.value for s in SETTLED]),
               Payment.reference.is_not(None),
               or_(Order.stage.in_((Stage.FAILED, Stage.CANCELLED)),
                   Payment.attempt != Order.payment_attempt))
        .order_by(Payment.updated_at).limit(limit))
    return [(order_id, attempt) for order_id, attempt in rows]


def settle_unknown_capture(session: Session, *, order_id: uuid.UUID, gateway: PaymentGateway,
                           owner: str) -> bool:
    """Ask the provider what became of a reserved order's capture, and follow it."""
    order = load(session, order_id=order_id)
    if order is None or order.current_stage is not Stage.RESERVED:
        attention.resolve(session, order_id=order_id, kind=attention.Kind.PAYMENT_UNKNOWN)
        session.commit()
        return False
    payment = payments.find_attempt(session, order_id=order_id, attempt=order.payment_attempt)
    assert payment is not None, "a reserved order has an authorized attempt"
    session.commit()
    with steps.leased(session, order_id=order_id, owner=owner):
        result = payments.inspect(payment=payment, gateway=gateway)
        order = steps.at_again(session, order_id=order_id, stage=Stage.RESERVED, owner=owner)
        if order is None:
            return False
        order.record("payment.reconciled", detail={"reference": result.reference},
                     internal={"provider_outcome": result.outcome.value})
        steps.settle_capture(session, order=order, result=result)
        order.lease_owner = order.lease_until = None
        session.commit()
    return True
