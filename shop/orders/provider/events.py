"""What the payment provider tells us, applied to orders: webhook events and abandoned
3-D Secure authentications.

The provider's view is the truth. An event only says "look at this intent": the
handler asks the provider for the PaymentIntent as it is now, under the order's lease
(the same serialization point the workflow's payment steps use), and hands the answer
to the one convergence path (``converge.settle``), whatever arrived, however often and
in whatever order. A dispute is decided from the dispute's own state, not the event's
type: a closed dispute stays closed, and each event is applied once.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable

from sqlalchemy import exists, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import Exists

from shop import metrics
from shop.db import utcnow
from shop.exceptions import BusyError, InvariantBroken, TransientError
from shop.messaging.service import enqueue_task
from shop.orders import attention, lease
from shop.orders.models import Attention, Order
from shop.orders.provider import converge
from shop.orders.queries import load
from shop.orders.states import Stage
from shop.orders.workflow.table import TaskName
from shop.payments import service as payments
from shop.payments import webhooks
from shop.payments.gateway import PaymentGateway, PaymentProviderError, ProviderEvent
from shop.payments.models import Payment

log = logging.getLogger(__name__)

KNOWN_TYPES = frozenset({
    "payment_intent.amount_capturable_updated", "payment_intent.succeeded",
    "payment_intent.payment_failed", "payment_intent.canceled", "charge.refunded",
    "charge.dispute.created", "charge.dispute.closed"})  # metrics label the rest "other"


def accept(session: Session, *, event: ProviderEvent) -> bool:
    """Record a verified event and queue its handling, in one commit; False if seen before."""
    new = webhooks.record(session, event=event)
    if new:
        enqueue_task(session, name=TaskName.HANDLE_PAYMENT_EVENT, kwargs={"event_id": event.id})
    session.commit()
    return new


def handle(session: Session, *, event_id: str, gateway: PaymentGateway, owner: str) -> str:
    """Bring the event's order in line with the provider; returns what it did."""
    event = webhooks.pending(session, event_id=event_id)
    if event is None:
        return "already_handled"
    reference = webhooks.intent_reference(event.payload)
    payment = payments.find_by_reference(session, reference=reference) if reference else None
    if payment is None:
        outcome = "ignored" if reference is None else "unknown_order"
        if reference is not None:
            log.warning("webhook %s (%s) is about intent %s of no known order (metadata %s)",
                        event.id, event.type, reference, webhooks.order_id_in(event.payload))
        webhooks.mark_handled(session, event_id=event_id, outcome=outcome, order_id=None)
        _count(session, event_type=event.type, outcome=outcome)
        session.commit()
        return outcome
    order_id, event_type = payment.order_id, event.type
    dispute = webhooks.dispute_summary(event.payload)
    session.commit()
    with lease.hold(session, order_id=order_id, owner=owner):
        result = payments.inspect(payment=payment, gateway=gateway)
        session.expire_all()
        order = load(session, order_id=order_id)
        fresh = session.get(Payment, payment.id)
        if order is None or fresh is None:
            raise InvariantBroken("a recorded payment belongs to an order")
        outcome = converge.settle(session, order=order, payment=fresh, result=result,
                                  cause=converge.Cause.EVENT)
        if event_type.startswith("charge.dispute."):
            outcome = converge.note_dispute(session, order=order, payment=fresh,
                                            event_id=event_id, dispute=dispute)
        webhooks.mark_handled(session, event_id=event_id, outcome=outcome, order_id=order_id)
        _count(session, event_type=event_type, outcome=outcome)
        lease.clear(order)
        session.commit()
    return outcome


def _count(session: Session, *, event_type: str, outcome: str) -> None:
    kind = event_type if event_type in KNOWN_TYPES else "other"
    metrics.on_commit(session, metrics.WEBHOOKS.labels(type=kind, outcome=outcome).inc)


def defer(session: Session, *, event_id: str, error: str) -> None:
    """An event whose handling ran out of attempts: leave it for reconciliation's next
    pass (it stays unhandled, and says why)."""
    log.warning("webhook %s could not be handled yet: %s", event_id, error)
    webhooks.mark_deferred(session, event_id=event_id, reason=error)
    session.commit()


def expire_authentications(session: Session, *, gateway: PaymentGateway, owner: str,
                           older_than: float, limit: int = 100) -> int:
    """Settle 3-D Secure authentications that waited too long, each order on its own.

    The provider is asked first, under the lease: an authorization the customer
    completed resumes the order, and only an intent still waiting for the customer is
    cancelled (``converge``). An order the provider answers nothing useful about is
    skipped this pass (transient) or flagged for a person (a permanent refusal); it
    never stops the others.
    """
    cutoff = utcnow() - dt.timedelta(seconds=older_than)
    waiting = list(session.scalars(
        select(Order.id).where(Order.stage == Stage.REQUIRES_ACTION, Order.updated_at < cutoff,
                               ~flagged(attention.Kind.PROVIDER_ERROR))
        .order_by(Order.updated_at).limit(limit)))
    session.commit()
    for order_id in waiting:
        each(session, order_id=order_id, what="3-D Secure expiry", work=lambda oid: (
            converge.converge(session, order_id=oid, gateway=gateway, owner=owner,
                              cause=converge.Cause.EXPIRY)))
    return len(waiting)


def flagged(kind: attention.Kind) -> Exists:
    """Orders with an open ``kind`` item (a filter for passes that should skip them)."""
    return exists().where(Attention.order_id == Order.id, Attention.kind == kind.value,
                          Attention.resolved_at.is_(None))


def each(session: Session, *, order_id: uuid.UUID, what: str,
         work: Callable[[uuid.UUID], object]) -> bool:
    """Run one order's part of a pass; its failure is its own. True if it ran through.

    Busy or transient: left for the next pass. A permanent provider refusal (the key
    was switched to another account, the intent is gone): flagged for a person with
    the provider's words, so later passes skip it instead of failing on it forever.
    """
    try:
        work(order_id)
        return True
    except (BusyError, TransientError) as exc:
        session.rollback()
        log.warning("%s of order %s waits for the next pass: %s", what, order_id, exc)
    except PaymentProviderError as exc:
        session.rollback()
        log.error("%s of order %s: the provider refuses: %s", what, order_id, exc)
        order = load(session, order_id=order_id)
        attention.flag(session, order_id=order_id, kind=attention.Kind.PROVIDER_ERROR,
                       message=f"{what}: the payment provider refuses: {exc}"[:500])
        if order is not None:
            order.record("payment.provider_error", internal={"what": what, "error": str(exc)})
        session.commit()
    return False
