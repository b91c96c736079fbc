"""What the payment provider tells us, applied to orders: webhook events and abandoned
3-D Secure authentications.

The provider's view is the truth. An event only says "look at this intent": the
handler asks the provider for the PaymentIntent as it is now, under the order's lease
(the same serialization point the workflow's payment steps use), and brings the order
to the state that matches, whatever arrived, however often and in whatever order.
Each handler commits the lease on its own before calling out, then its outcome.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from shop import metrics
from shop.db import utcnow
from shop.exceptions import InvariantBroken
from shop.messaging.service import enqueue_task
from shop.orders import attention, lease
from shop.orders.models import Order
from shop.orders.queries import load
from shop.orders.states import Event, Stage, Step
from shop.orders.workflow.flow import advance, compensate, fail
from shop.orders.workflow.steps import settle_capture
from shop.orders.workflow.table import TaskName
from shop.payments import service as payments
from shop.payments import webhooks
from shop.payments.gateway import PaymentGateway, ProviderEvent
from shop.payments.models import Payment
from shop.payments.service import Outcome, Result

log = logging.getLogger(__name__)

ABANDONED = "The customer did not complete authentication."
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
        if order is None:
            raise InvariantBroken("order is missing")
        outcome = converge(session, order=order, payment=payment, result=result)
        if event_type.startswith("charge.dispute."):
            outcome = _note_dispute(session, order=order, event_type=event_type,
                                    dispute=dispute)
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


def converge(session: Session, *, order: Order, payment: Payment, result: Result) -> str:
    """Move the order to match ``result``, the provider's view (the caller commits)."""
    stage = order.current_stage
    if payment.attempt != order.payment_attempt:
        payments.record(session, result=result)  # an old attempt: reconciliation releases it
        return "old_attempt"
    if stage is Stage.IN_STOCK:
        return "unchanged"  # the charge step is the one deciding; it asks the same provider
    if stage is Stage.REQUIRES_ACTION:
        return _after_authentication(session, order=order, result=result)
    if stage in (Stage.AUTHORIZED, Stage.RESERVED):
        return _while_in_flight(session, order=order, result=result)
    payments.record(session, result=result)
    if stage is Stage.CONFIRMED and result.outcome is Outcome.REFUNDED:
        return _note_refund(order=order, payment=payment, result=result)
    if stage in (Stage.FAILED, Stage.CANCELLED) and payments.unsettled(payment):
        compensate(session, order=order)  # money held for an order that wants none
        return "released"
    return "unchanged"


def _after_authentication(session: Session, *, order: Order, result: Result) -> str:
    detail = {"reference": result.reference}
    if result.outcome in (Outcome.AUTHORIZED, Outcome.CAPTURED):
        payments.record(session, result=result)
        advance(session, order=order, event=Event.PAYMENT_AUTHORIZED, detail=detail)
        return "resumed"
    if result.outcome is Outcome.DECLINED:
        payments.record(session, result=result)
        fail(session, order=order, step=Step.PAYMENT,
             reason=result.reason or "authentication_failed", provider_text=result.message,
             event=Event.PAYMENT_FAILED, detail=detail)
        return "failed"
    if result.outcome is Outcome.VOIDED:
        payments.record(session, result=result)
        fail(session, order=order, step=Step.PAYMENT, reason="payment_cancelled",
             event=Event.PAYMENT_CANCELLED, detail=detail)
        return "failed"
    return "unchanged"


def _while_in_flight(session: Session, *, order: Order, result: Result) -> str:
    if result.outcome in (Outcome.VOIDED, Outcome.DECLINED):  # e.g. the authorization expired
        payments.record(session, result=result)
        fail(session, order=order, step=Step.PAYMENT, reason="payment_cancelled",
             event=Event.PAYMENT_CANCELLED, detail={"reference": result.reference})
        return "failed"
    if order.current_stage is Stage.RESERVED and result.outcome is Outcome.CAPTURED:
        settle_capture(session, order=order, result=result, was_unknown=True)  # answer lost
        return "confirmed"
    return "unchanged"


def _note_refund(*, order: Order, payment: Payment, result: Result) -> str:
    status = payment.status  # set by ``payments.record`` just before
    order.record(f"payment.{status}", detail={"amount_refunded": result.refunded,
                                              "amount_captured": payment.amount_captured})
    return "refund_recorded"


def _note_dispute(session: Session, *, order: Order, event_type: str,
                  dispute: dict[str, object]) -> str:
    if event_type == "charge.dispute.closed":
        attention.resolve(session, order_id=order.id, kind=attention.Kind.DISPUTE)
        order.record("dispute.closed", internal=dict(dispute))
        return "dispute_closed"
    attention.flag(session, order_id=order.id, kind=attention.Kind.DISPUTE,
                   message=f"The customer disputed the charge ({dispute.get('reason')}, "
                           f"{dispute.get('amount')} {dispute.get('currency')})")
    order.record("dispute.created" if event_type == "charge.dispute.created"
                 else event_type, internal=dict(dispute))
    return "dispute_recorded"


def expire_authentications(session: Session, *, gateway: PaymentGateway, owner: str,
                           older_than: float, limit: int = 100) -> int:
    """Cancel 3-D Secure authentications the customer abandoned, and fail their orders.

    The intent is cancelled first; if the customer completed it just before, the
    cancel loses the race and the order follows what the provider says instead.
    """
    cutoff = utcnow() - dt.timedelta(seconds=older_than)
    waiting = list(session.scalars(
        select(Order.id).where(Order.stage == Stage.REQUIRES_ACTION, Order.updated_at < cutoff)
        .order_by(Order.updated_at).limit(limit)))
    session.commit()
    for order_id in waiting:
        _abandon(session, order_id=order_id, gateway=gateway, owner=owner)
    return len(waiting)


def _abandon(session: Session, *, order_id: uuid.UUID, gateway: PaymentGateway,
             owner: str) -> None:
    order = load(session, order_id=order_id)
    if order is None or order.current_stage is not Stage.REQUIRES_ACTION:
        return
    payment = payments.find_attempt(session, order_id=order_id, attempt=order.payment_attempt)
    if payment is None:
        raise InvariantBroken("an order waiting for authentication has an intent")
    session.commit()
    with lease.hold(session, order_id=order_id, owner=owner):
        result = payments.cancel(payment=payment, gateway=gateway)
        session.expire_all()
        order = load(session, order_id=order_id)
        if order is None:
            raise InvariantBroken("order is missing")
        if order.current_stage is Stage.REQUIRES_ACTION and result.outcome is Outcome.VOIDED:
            payments.record(session, result=result)
            fail(session, order=order, step=Step.PAYMENT, reason="authentication_failed",
                 provider_text=ABANDONED, event=Event.PAYMENT_CANCELLED,
                 detail={"reference": result.reference})
        else:
            converge(session, order=order, payment=payment, result=result)
        lease.clear(order)
        session.commit()
