"""Reconciliation with the payment provider, whose view of a payment is the truth.

Beat runs ``reconcile`` every five minutes (``shop reconcile`` runs it now). A pass:

- asks about captures whose outcome is unknown (their step ran out of attempts while
  the provider did not answer) and follows the answer: captured → confirm; still
  only authorized → cancel it and fail the order; gone → fail the order;
- releases what failed or cancelled orders still hold at the provider (a void or a
  refund that ran out of attempts, or whose message was lost);
- handles webhook events whose handling ran out of attempts (the provider was down);
- sends again, with their same keys, line refunds whose outcome is unknown (their task
  ran out of attempts, or its worker died, after the call went out);
- compares the ledger of every attempt that changed with the provider, to the cent:
  a mismatch is flagged for a person with both sides' amounts, never "fixed";
- acts on authorizations close to their 7-day expiry: a confirmed order's is captured,
  any other order is failed and its authorization cancelled;
- finds intents of the last two hours that no payment row records: one the shop can
  prove it created (its order, attempt, amount and currency match an attempt whose
  create answer was lost) is recorded on that attempt and released; any other that
  names an order is flagged for a person and left alone; one naming no order the
  shop knows is logged and counted, and left alone.

Reconciliation moves money only through ``converge``. Every section and every order
is on its own: one that fails (the provider refuses, a row is busy) is counted and
left for the next pass, and never stops the rest.

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
from shop.exceptions import BusyError, TransientError
from shop.orders import attention
from shop.orders.models import Attention, Order
from shop.orders.provider import converge, events
from shop.orders.refunds import service as refunds
from shop.orders.states import Stage
from shop.payments import service as payments
from shop.payments import webhooks
from shop.payments.gateway import IntentState, PaymentError, PaymentGateway
from shop.payments.models import SETTLED, Payment

log = logging.getLogger(__name__)
EVENT_GRACE_SECONDS = 300.0  # an event's own task has had this long to handle it
AUTHORIZATION_AGE = dt.timedelta(days=6)  # Stripe lets an authorization lapse after 7
SCAN_WINDOW = (dt.timedelta(hours=2), dt.timedelta(minutes=10))  # old enough to be settled
SCAN_BATCH = 1000


def reconcile(session: Session, *, gateway: PaymentGateway, owner: str,
              limit: int = 200) -> Counter[str]:
    """One pass over what the provider must settle; returns what was mended."""
    tally: Counter[str] = Counter()
    sections: list[tuple[str, Callable[[], None]]] = [
        ("unknown_captures", partial(_unknown_captures, session, gateway=gateway, owner=owner,
                                     limit=limit, tally=tally)),
        ("releases", partial(_releases, session, gateway=gateway, owner=owner, limit=limit,
                             tally=tally)),
        ("expiring", partial(_expiring, session, gateway=gateway, owner=owner, limit=limit,
                             tally=tally)),
        ("intents", partial(scan_intents, session, gateway=gateway, owner=owner, tally=tally)),
        ("events", partial(_events, session, gateway=gateway, owner=owner, limit=limit,
                           tally=tally)),
        ("refunds", partial(_refunds, session, gateway=gateway, owner=owner, limit=limit,
                            tally=tally)),
        ("ledger", partial(_ledger, session, gateway=gateway, limit=limit, tally=tally)),
    ]
    for name, section in sections:
        try:
            section()
        except Exception:  # one section's failure is its own: the others still run
            session.rollback()
            log.exception("reconcile: the %s section failed; the next pass tries again", name)
            tally[f"{name}_failed"] += 1
    session.commit()
    for mend, count in tally.items():
        metrics.RECONCILE_MENDS.labels(mend=mend).inc(count)
    return tally


def _unknown_captures(session: Session, *, gateway: PaymentGateway, owner: str, limit: int,
                      tally: Counter[str]) -> None:
    for order_id in list(session.scalars(
            select(Attention.order_id).where(Attention.kind == attention.Kind.PAYMENT_UNKNOWN,
                                             Attention.resolved_at.is_(None))
            .order_by(Attention.created_at).limit(limit))):
        _attempt(session, tally, "capture_settled", "capture_unknown", order_id, partial(
            converge.settle_unknown_capture, session, order_id=order_id, gateway=gateway,
            owner=owner))


def _releases(session: Session, *, gateway: PaymentGateway, owner: str, limit: int,
              tally: Counter[str]) -> None:
    for order_id, attempt in _held_for_nothing(session, limit=limit):
        _attempt(session, tally, "released", "release_pending", order_id, partial(
            converge.release, session, order_id=order_id, attempt=attempt, gateway=gateway,
            owner=owner))


def _expiring(session: Session, *, gateway: PaymentGateway, owner: str, limit: int,
              tally: Counter[str]) -> None:
    for order_id in payments.expiring(session, authorized_before=utcnow() - AUTHORIZATION_AGE,
                                      limit=limit):
        _attempt(session, tally, "expiring_settled", "expiring_pending", order_id, partial(
            converge.settle_expiring, session, order_id=order_id, gateway=gateway,
            owner=owner))


def _events(session: Session, *, gateway: PaymentGateway, owner: str, limit: int,
            tally: Counter[str]) -> None:
    stale = utcnow() - dt.timedelta(seconds=EVENT_GRACE_SECONDS)
    for event_id in webhooks.unhandled(session, older_than=stale, limit=limit):
        _attempt(session, tally, "event_handled", "event_pending", event_id, partial(
            _handle_event, session, event_id=event_id, gateway=gateway, owner=owner))


def _ledger(session: Session, *, gateway: PaymentGateway, limit: int,
            tally: Counter[str]) -> None:
    """The ledger against the provider, to the cent, for attempts that changed since it
    last agreed (settled ones only: money still moving is the workflow's)."""
    settled_before = utcnow() - SCAN_WINDOW[1]
    for payment_id in payments.unverified(session, settled_before=settled_before, limit=limit):
        try:
            agrees = converge.verify_ledger(session, payment_id=payment_id, gateway=gateway)
        except (TransientError, PaymentError) as exc:
            session.rollback()
            log.warning("reconcile: the ledger of payment %s waits: %s", payment_id, exc)
            tally["ledger_pending"] += 1
            continue
        tally["ledger_verified" if agrees else "ledger_mismatch"] += 1


def _handle_event(session: Session, *, event_id: str, gateway: PaymentGateway,
                  owner: str) -> bool:
    return events.handle(session, event_id=event_id, gateway=gateway,
                         owner=owner) != "already_handled"


def _refunds(session: Session, *, gateway: PaymentGateway, owner: str, limit: int,
             tally: Counter[str]) -> None:
    """Line refunds sent whose outcome nobody recorded: sent again, same key."""
    before = utcnow() - dt.timedelta(seconds=EVENT_GRACE_SECONDS)
    for refund_id in refunds.unknown(session, before=before, limit=limit):
        _attempt(session, tally, "refund_settled", "refund_unknown", str(refund_id),
                 partial(_refund_again, session, refund_id=refund_id, gateway=gateway,
                         owner=owner))


def _refund_again(session: Session, *, refund_id: uuid.UUID, gateway: PaymentGateway,
                  owner: str) -> bool:
    return converge.refund_lines(session, refund_id=refund_id, gateway=gateway,
                                 owner=owner) == "refunded"


def _attempt(session: Session, tally: Counter[str], done: str, pending: str,
             subject: uuid.UUID | str, mend: Callable[[], bool]) -> None:
    """One item of a section: its failure is counted and left for the next pass; a
    permanent refusal about an order is flagged for a person (``events.each``)."""
    if isinstance(subject, uuid.UUID):
        mended: list[bool] = []
        if events.each(session, order_id=subject, what="reconciliation",
                       work=lambda _id: mended.append(bool(mend()))):
            tally[done if mended and mended[0] else "unchanged"] += 1
        else:
            tally[pending] += 1
        return
    try:
        mended_event = mend()
    except (TransientError, BusyError, PaymentError) as exc:
        session.rollback()
        log.warning("reconcile: %s still %s: %s", subject, pending, exc)
        tally[pending] += 1
        return
    tally[done if mended_event else "unchanged"] += 1


def _held_for_nothing(session: Session, *, limit: int) -> list[tuple[uuid.UUID, int]]:
    """Attempts that may still hold money for an order that no longer wants them."""
    rows = session.execute(
        select(Payment.order_id, Payment.attempt).join(Order, Order.id == Payment.order_id)
        .where(Payment.status.not_in([s.value for s in SETTLED]),
               Payment.reference.is_not(None),
               or_(Order.stage.in_((Stage.FAILED, Stage.CANCELLED)),
                   Payment.attempt != Order.payment_attempt),
               ~events.flagged(attention.Kind.PROVIDER_ERROR))
        .order_by(Payment.updated_at).limit(limit))
    return [(order_id, attempt) for order_id, attempt in rows]


def scan_intents(session: Session, *, gateway: PaymentGateway, owner: str,
                 tally: Counter[str]) -> None:
    """Intents no payment row records: the shop's own are released, strangers' flagged.

    References are looked up in batches of ``SCAN_BATCH`` (PostgreSQL takes at most
    65,535 parameters in one statement), and each intent is handled on its own.
    """
    now = utcnow()
    since, settled = (int((now - age).timestamp()) for age in SCAN_WINDOW)
    batch: list[IntentState] = []
    for intent in gateway.list_intents(created_after=since):
        if intent.created < settled:
            batch.append(intent)
        if len(batch) >= SCAN_BATCH:
            _scan_batch(session, batch, gateway=gateway, owner=owner, tally=tally)
            batch = []
    _scan_batch(session, batch, gateway=gateway, owner=owner, tally=tally)


def _scan_batch(session: Session, intents: list[IntentState], *, gateway: PaymentGateway,
                owner: str, tally: Counter[str]) -> None:
    if not intents:
        return
    known = payments.known_references(session, references=[i.reference for i in intents])
    session.commit()
    tally["intents_scanned"] += len(intents)
    for intent in intents:
        if intent.reference in known or not payments.holds_money(intent):
            continue
        try:
            tally[converge.adopt_orphan(session, intent=intent, gateway=gateway,
                                        owner=owner)] += 1
        except (TransientError, BusyError, PaymentError) as exc:
            session.rollback()
            log.warning("reconcile: intent %s waits for the next pass: %s",
                        intent.reference, exc)
            tally["orphan_pending"] += 1
