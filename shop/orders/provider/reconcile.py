"""Reconciliation with the payment provider, whose view of a payment is the truth.

Beat runs ``reconcile`` every five minutes (``shop reconcile`` runs it now). A pass:

- asks about captures whose outcome is unknown (their step ran out of attempts while
  the provider did not answer) and follows the answer: captured → confirm; still
  only authorized → cancel it and fail the order; gone → fail the order;
- releases what failed or cancelled orders still hold at the provider (a void or a
  refund that ran out of attempts, or whose message was lost);
- handles webhook events whose handling ran out of attempts (the provider was down);
- acts on authorizations close to their 7-day expiry: a confirmed order's is captured,
  any other order is failed and its authorization cancelled;
- finds intents of the last two hours that no payment row records: one of the shop's
  own (a create whose answer was lost) is cancelled or refunded; one carrying an order
  id the shop does not know is logged and counted, and its money left alone.

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

from shop import metrics
from shop.db import utcnow
from shop.exceptions import BusyError, InvariantBroken, TransientError
from shop.orders import attention, lease
from shop.orders.models import Attention, Order
from shop.orders.provider import events as payment_events
from shop.orders.queries import load
from shop.orders.states import Stage, Step
from shop.orders.workflow import steps
from shop.orders.workflow.flow import fail
from shop.payments import service as payments
from shop.payments import webhooks
from shop.payments.gateway import PaymentError, PaymentGateway
from shop.payments.models import SETTLED, Payment

log = logging.getLogger(__name__)
EVENT_GRACE_SECONDS = 300.0  # an event's own task has had this long to handle it
AUTHORIZATION_AGE = dt.timedelta(days=6)  # Stripe lets an authorization lapse after 7
SCAN_WINDOW = (dt.timedelta(hours=2), dt.timedelta(minutes=10))  # old enough to be settled


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
    for order_id in payments.expiring(session, authorized_before=utcnow() - AUTHORIZATION_AGE,
                                      limit=limit):
        _attempt(tally, "expiring_settled", "expiring_pending", order_id, partial(
            settle_expiring, session, order_id=order_id, gateway=gateway, owner=owner))
    _attempt(tally, "intents_scanned", "scan_pending", "intents", partial(
        scan_intents, session, gateway=gateway, tally=tally))
    stale = utcnow() - dt.timedelta(seconds=EVENT_GRACE_SECONDS)
    for event_id in webhooks.unhandled(session, older_than=stale, limit=limit):
        _attempt(tally, "event_handled", "event_pending", event_id, partial(
            _handle_event, session, event_id=event_id, gateway=gateway,
            owner=owner))
    session.commit()
    for mend, count in tally.items():
        metrics.RECONCILE_MENDS.labels(mend=mend).inc(count)
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
    if payment is None:
        raise InvariantBroken("a reserved order has an authorized attempt")
    session.commit()
    with lease.hold(session, order_id=order_id, owner=owner):
        result = payments.inspect(payment=payment, gateway=gateway)
        order = steps.at_again(session, order_id=order_id, stage=Stage.RESERVED, owner=owner)
        if order is None:
            return False
        order.record("payment.reconciled", detail={"reference": result.reference},
                     internal={"provider_outcome": result.outcome.value})
        steps.settle_capture(session, order=order, result=result, was_unknown=True)
        lease.clear(order)
        session.commit()
    return True


def settle_expiring(session: Session, *, order_id: uuid.UUID, gateway: PaymentGateway,
                    owner: str) -> bool:
    """An authorization about to lapse: capture it for a confirmed order, else let it go."""
    order = load(session, order_id=order_id)
    if order is None or order.current_stage in (Stage.FAILED, Stage.CANCELLED):
        return False  # the release of failed and cancelled orders takes care of it
    payment = payments.find_attempt(session, order_id=order_id, attempt=order.payment_attempt)
    if payment is None:
        raise InvariantBroken("payment is missing")
    session.commit()
    with lease.hold(session, order_id=order_id, owner=owner):
        result = None
        if order.current_stage is Stage.CONFIRMED:
            result = payments.capture(payment=payment, amount=order.total, gateway=gateway)
        session.expire_all()
        order = load(session, order_id=order_id)
        if order is None:
            raise InvariantBroken("order is missing")
        if result is not None:
            payments.record(session, result=result)
            order.record("payment.captured_before_expiry", detail={"reference": result.reference})
        elif not order.current_stage.terminal:
            fail(session, order=order, step=Step.PAYMENT, reason="timeout",
                 error="the authorization was about to expire at the provider")
        lease.clear(order)
        session.commit()
    return True


def scan_intents(session: Session, *, gateway: PaymentGateway, tally: Counter[str]) -> bool:
    """Intents no payment row records: release the shop's own, report strangers'."""
    now = utcnow()
    since, settled = (int((now - age).timestamp()) for age in SCAN_WINDOW)
    intents = [i for i in gateway.list_intents(created_after=since) if i.created < settled]
    known = payments.known_references(session, references=[i.reference for i in intents])
    for intent in intents:
        if intent.reference in known or not payments.holds_money(intent):
            continue
        order = _order_of(session, intent.metadata.get("order_id"))
        if order is None:
            log.warning("intent %s holds money for order id %r, which the shop does not know",
                        intent.reference, intent.metadata.get("order_id"))
            tally["unknown_intent"] += 1
            continue
        ended = payments.release_orphan(state=intent, gateway=gateway)
        order.record("payment.orphan_released", internal={
            "reference": intent.reference, "status": ended.status.value,
            "refunded": ended.amount_refunded})
        if ended.amount_refunded:
            attention.flag(session, order_id=order.id, kind=attention.Kind.REFUNDED_UNCONFIRMED,
                           message=f"intent {intent.reference} took money the order never "
                                   f"recorded; refunded {ended.amount_refunded}")
        session.commit()
        tally["orphan_released"] += 1
    return True


def _order_of(session: Session, order_id: str | None) -> Order | None:
    try:
        return load(session, order_id=uuid.UUID(str(order_id)))
    except ValueError:
        return None
