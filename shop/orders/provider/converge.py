"""The one convergence path: from what the payment provider says to the order's state.

Every door that learns something about an order's money comes here, under the order's
lease: the workflow's payment steps with the answer of the call they just made, and
webhook events, reconciliation, the 3-D Secure expiry, give-ups and admin retry and
cancel with what the provider says now (``converge``). ``settle`` decides what the
order's payment and stage should be from that answer and what the order holds, and
records both in the caller's transaction: it is the only caller of
``payments.record`` (the one writer of payment state), and the functions below are
the only callers of the provider calls that move money (capture, cancel, refund,
and a line refund's ``refund_lines``).
An architecture test holds that.

    provider says            order at            becomes
    ─────────────────────    ─────────────────   ─────────────────────────────────────
    authorized / captured    in_stock (charge)   authorized (a capture is taken as
                                                 authorized: the capture step sees it)
    requires_action          in_stock (charge)   requires_action
    declined / voided        in_stock (charge)   failed, with the card's reason
    authorized / captured    requires_action     authorized ("resumed")
    declined / voided        requires_action     failed
    voided / declined        authorized, reserved failed (the authorization lapsed)
    captured                 reserved            confirmed
    authorized (not taken)   reserved, capture   failed, authorization released
    refunded                 confirmed           the refund recorded on the timeline
    holds money              failed, cancelled   released (a task: ``release``)
    anything                 an older attempt    recorded; released unless wanted

Only money the shop can prove it created is moved automatically: an attempt with a
payment row, or an intent whose order, attempt, amount and currency all match an
attempt whose create answer was lost (``adopt_orphan``). Anything else that names an
order is flagged for a person and left alone.
"""

from __future__ import annotations

import logging
import uuid
from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session

from shop.exceptions import InvariantBroken
from shop.orders import attention, lease
from shop.orders.flow import advance, compensate, fail
from shop.orders.models import Order
from shop.orders.provider import disputes
from shop.orders.queries import load
from shop.orders.refunds import service as refunds
from shop.orders.refunds.models import RefundStatus
from shop.orders.states import Event, Stage, Step
from shop.payments import service as payments
from shop.payments.gateway import IntentState, PaymentGateway, PaymentProviderError
from shop.payments.models import Payment
from shop.payments.service import Outcome, Result

log = logging.getLogger(__name__)

ABANDONED = "The customer did not complete authentication."


class Cause(StrEnum):
    """Who asks: it decides the few cases where the same answer means different things."""

    CHARGE = "charge"  # the charge step, with its call's answer
    CAPTURE = "capture"  # the capture step, with its call's answer
    UNKNOWN_CAPTURE = "unknown_capture"  # reconciliation of a capture whose answer was lost
    EVENT = "event"  # a webhook event: look again
    EXPIRY = "expiry"  # the 3-D Secure wait ran out
    RECONCILE = "reconcile"


def settle(session: Session, *, order: Order, payment: Payment, result: Result,
           cause: Cause) -> str:
    """Bring the order and its payment row in line with ``result`` (the caller commits)."""
    if payment.attempt != order.payment_attempt:
        # An old attempt: ``release`` lets it go unless the order counts on it again.
        payments.record(session, result=result, payment=payment)
        return "old_attempt"
    stage = order.current_stage
    if stage is Stage.IN_STOCK:
        if cause is not Cause.CHARGE:
            return "unchanged"  # the charge step is the one deciding; it asks the same provider
        return _charged(session, order=order, payment=payment, result=result)
    if stage is Stage.REQUIRES_ACTION:
        return _after_authentication(session, order=order, payment=payment, result=result,
                                     cause=cause)
    if stage in (Stage.AUTHORIZED, Stage.RESERVED):
        return _while_in_flight(session, order=order, payment=payment, result=result,
                                cause=cause)
    payments.record(session, result=result, payment=payment)
    if stage is Stage.CONFIRMED and result.outcome is Outcome.REFUNDED:
        order.record(f"payment.{payment.status}", detail={
            "amount_refunded": result.refunded, "amount_captured": payment.amount_captured})
        return "refund_recorded"
    if stage in (Stage.FAILED, Stage.CANCELLED) and payments.unsettled(payment):
        compensate(session, order=order)  # money held for an order that wants none
        return "released"
    return "unchanged"


def _charged(session: Session, *, order: Order, payment: Payment, result: Result) -> str:
    payments.record(session, result=result, payment=payment)
    detail = {"reference": result.reference, "attempt": order.payment_attempt}
    if result.outcome in (Outcome.AUTHORIZED, Outcome.CAPTURED):
        advance(session, order=order, event=Event.PAYMENT_AUTHORIZED, detail=detail)
        return "authorized"
    if result.outcome is Outcome.REQUIRES_ACTION:
        advance(session, order=order, event=Event.PAYMENT_REQUIRES_ACTION, detail=detail)
        return "requires_action"
    reason = result.reason or ("payment_cancelled" if result.outcome is Outcome.VOIDED
                               else "card_declined")
    fail(session, order=order, step=Step.PAYMENT, reason=reason, provider_text=result.message,
         error=result.detail, event=Event.PAYMENT_FAILED, detail=detail)
    return "failed"


def _after_authentication(session: Session, *, order: Order, payment: Payment,
                          result: Result, cause: Cause) -> str:
    detail = {"reference": result.reference}
    if result.outcome in (Outcome.AUTHORIZED, Outcome.CAPTURED):
        payments.record(session, result=result, payment=payment)
        advance(session, order=order, event=Event.PAYMENT_AUTHORIZED, detail=detail)
        return "resumed"
    if result.outcome is Outcome.DECLINED:
        payments.record(session, result=result, payment=payment)
        fail(session, order=order, step=Step.PAYMENT,
             reason=result.reason or "authentication_failed", provider_text=result.message,
             event=Event.PAYMENT_FAILED, detail=detail)
        return "failed"
    if result.outcome is Outcome.VOIDED:
        payments.record(session, result=result, payment=payment)
        if cause is Cause.EXPIRY:
            fail(session, order=order, step=Step.PAYMENT, reason="authentication_failed",
                 provider_text=ABANDONED, event=Event.PAYMENT_CANCELLED, detail=detail)
        else:
            fail(session, order=order, step=Step.PAYMENT, reason="payment_cancelled",
                 event=Event.PAYMENT_CANCELLED, detail=detail)
        return "failed"
    return "unchanged"


def _while_in_flight(session: Session, *, order: Order, payment: Payment, result: Result,
                     cause: Cause) -> str:
    detail = {"reference": result.reference, "amount": result.captured}
    if result.outcome in (Outcome.VOIDED, Outcome.DECLINED):  # e.g. the authorization expired
        payments.record(session, result=result, payment=payment)
        fail(session, order=order, step=Step.PAYMENT, reason="payment_cancelled",
             event=Event.PAYMENT_CANCELLED, detail={"reference": result.reference})
        return "failed"
    if order.current_stage is not Stage.RESERVED:
        return "unchanged"
    if cause is not Cause.CAPTURE:  # the step's own answer needs no flag closed
        if result.outcome is not Outcome.CAPTURED and cause is not Cause.UNKNOWN_CAPTURE:
            return "unchanged"  # authorized and waiting for its capture step
        attention.resolve(session, order_id=order.id, kind=attention.Kind.PAYMENT_UNKNOWN,
                          order=order, why="the provider says what became of the capture")
    payments.record(session, result=result, payment=payment)
    if result.outcome is Outcome.CAPTURED:
        advance(session, order=order, event=Event.PAYMENT_CAPTURED, detail=detail)
        return "confirmed"
    if result.outcome is Outcome.AUTHORIZED:  # never captured: let the authorization go
        fail(session, order=order, step=Step.PAYMENT, reason="payment_unavailable",
             error="the capture did not happen; the authorization is cancelled",
             event=Event.PAYMENT_FAILED, detail=detail)
    else:
        fail(session, order=order, step=Step.PAYMENT, reason="capture_failed",
             error=f"the authorization could not be captured ({result.outcome})",
             event=Event.PAYMENT_FAILED, detail=detail)
    return "failed"


# --- under the lease: ask, move money if the order needs it, settle ------------------


def current_attempt(session: Session, *, order: Order) -> Payment | None:
    return payments.find_attempt(session, order_id=order.id, attempt=order.payment_attempt)


def converge(session: Session, *, order_id: uuid.UUID, gateway: PaymentGateway, owner: str,
             cause: Cause) -> str:
    """Ask the provider about the order's current attempt and follow what it says.

    Takes the order's lease; ``OrderBusy`` if another holder has it.
    """
    with lease.hold(session, order_id=order_id, owner=owner):
        order = load(session, order_id=order_id)
        payment = current_attempt(session, order=order) if order is not None else None
        if order is None or payment is None:
            return "no_payment"
        session.commit()
        if cause is Cause.EXPIRY and order.current_stage is Stage.REQUIRES_ACTION:
            result = _expire(payment=payment, gateway=gateway)
        else:
            result = payments.inspect(payment=payment, gateway=gateway)
        session.expire_all()
        order = _reloaded(session, order_id)
        payment = _reloaded_payment(session, payment)
        outcome = settle(session, order=order, payment=payment, result=result, cause=cause)
        lease.clear(order)
        session.commit()
        return outcome


def _expire(*, payment: Payment, gateway: PaymentGateway) -> Result:
    """Ask first: an authorization the customer completed resumes the order; only an
    intent still waiting for the customer is cancelled."""
    result = payments.inspect(payment=payment, gateway=gateway)
    if result.outcome is Outcome.REQUIRES_ACTION:
        result = payments.cancel(payment=payment, gateway=gateway)
    return result


def charge(session: Session, *, order: Order, payment: Payment, gateway: PaymentGateway) -> str:
    """The charge step's provider call and its settling (the caller holds the lease)."""
    result = payments.authorize(session, payment=payment, payment_method=order.payment_method,
                                gateway=gateway)
    return settle(session, order=order, payment=payment, result=result, cause=Cause.CHARGE)


def capture(session: Session, *, order: Order, payment: Payment, gateway: PaymentGateway) -> str:
    """The capture step's provider call and its settling (the caller holds the lease)."""
    result = payments.capture(payment=payment, amount=order.total, gateway=gateway)
    return settle(session, order=order, payment=payment, result=result, cause=Cause.CAPTURE)


def settle_unknown_capture(session: Session, *, order_id: uuid.UUID, gateway: PaymentGateway,
                           owner: str) -> bool:
    """Ask what became of a reserved order's capture whose answer was lost, and follow it."""
    order = load(session, order_id=order_id)
    if order is None or order.current_stage is not Stage.RESERVED:
        attention.resolve(session, order_id=order_id, kind=attention.Kind.PAYMENT_UNKNOWN,
                          order=order, why="the order is no longer waiting for its capture")
        session.commit()
        return False
    with lease.hold(session, order_id=order_id, owner=owner):
        payment = current_attempt(session, order=order)
        if payment is None:
            raise InvariantBroken("a reserved order has an authorized attempt")
        session.commit()
        result = payments.inspect(payment=payment, gateway=gateway)
        session.expire_all()
        order = _reloaded(session, order_id)
        if order.current_stage is not Stage.RESERVED:
            return False
        order.record("payment.reconciled", detail={"reference": result.reference},
                     internal={"provider_outcome": result.outcome.value})
        settle(session, order=order, payment=_reloaded_payment(session, payment),
               result=result, cause=Cause.UNKNOWN_CAPTURE)
        lease.clear(order)
        session.commit()
    return True


def settle_expiring(session: Session, *, order_id: uuid.UUID, gateway: PaymentGateway,
                    owner: str) -> bool:
    """An authorization about to lapse: capture it for a confirmed order, else let it go."""
    order = load(session, order_id=order_id)
    if order is None or order.current_stage in (Stage.FAILED, Stage.CANCELLED):
        return False  # the release of failed and cancelled orders takes care of it
    with lease.hold(session, order_id=order_id, owner=owner):
        payment = current_attempt(session, order=order)
        if payment is None:
            raise InvariantBroken("an expiring authorization has its attempt")
        session.commit()
        result = None
        if order.current_stage is Stage.CONFIRMED:
            result = payments.capture(payment=payment, amount=order.total, gateway=gateway)
        session.expire_all()
        order = _reloaded(session, order_id)
        if result is not None:
            payments.record(session, result=result, payment=payment)
            order.record("payment.captured_before_expiry", detail={"reference": result.reference})
        elif not order.current_stage.terminal:
            fail(session, order=order, step=Step.PAYMENT, reason="timeout",
                 error="the authorization was about to expire at the provider")
        lease.clear(order)
        session.commit()
    return True


def release(session: Session, *, order_id: uuid.UUID, attempt: int, gateway: PaymentGateway,
            owner: str) -> bool:
    """Compensation's provider half: cancel or refund what an attempt holds.

    Decided under the lease, before the call: an attempt the order still counts on (an
    admin retried it and took the authorization over) is left alone, whenever the retry
    happened. True if it released.
    """
    with lease.hold(session, order_id=order_id, owner=owner):
        order = load(session, order_id=order_id)
        if order is None or wants(order, attempt):
            return False
        payment = payments.find_attempt(session, order_id=order_id, attempt=attempt)
        if payment is None or not payments.unsettled(payment):
            return False
        session.commit()
        result = payments.release(payment=payment, gateway=gateway)
        session.expire_all()
        order = _reloaded(session, order_id)
        record = payments.record(session, result=result, payment=payment)
        order.record(f"payment.{record.status}", detail={"reference": result.reference},
                     internal={"attempt": attempt, "refunded": result.refunded})
        if result.refunded and order.current_stage is Stage.FAILED:  # taken, then given back
            attention.flag(session, order_id=order_id, kind=attention.Kind.REFUNDED_UNCONFIRMED,
                           message=f"{result.refunded} {order.currency} was captured for an "
                                   "order that was not confirmed, and refunded")
        attention.resolve(session, order_id=order_id, kind=attention.Kind.RELEASE_FAILED,
                          order=order, why="the release went through")
        lease.clear(order)
        session.commit()
    return True


def wants(order: Order, attempt: int) -> bool:
    """Whether the order still counts on this payment attempt."""
    return attempt == order.payment_attempt and order.current_stage not in (
        Stage.FAILED, Stage.CANCELLED)


def adopt_orphan(session: Session, *, intent: IntentState, gateway: PaymentGateway,
                 owner: str) -> str:
    """An intent no payment row records: the shop's own only if its order, attempt, amount
    and currency all match an attempt whose create answer was lost; then it is recorded
    on that attempt and released unless the order still wants it. Anything else is
    flagged for a person, and nothing is done to it."""
    order, payment = _claimed_by(session, intent=intent)
    if payment is None:
        if order is not None:
            attention.flag(session, order_id=order.id, kind=attention.Kind.UNRECOGNIZED_PAYMENT,
                           message=_stranger(intent))
            order.record("payment.unrecognized", internal={
                "reference": intent.reference, "status": intent.status.value,
                "amount": intent.amount, "currency": intent.currency})
            session.commit()
            return "flagged"
        log.warning("intent %s names order %r, which the shop does not know; left alone",
                    intent.reference, intent.metadata.get("order_id"))
        return "unknown_order"
    if order is None:
        raise InvariantBroken("an attempt's row belongs to an order")
    payments.adopt(session, payment=payment, reference=intent.reference)
    order.record("payment.create_answer_recovered", internal={"reference": intent.reference})
    session.commit()
    if release(session, order_id=order.id, attempt=payment.attempt, gateway=gateway,
               owner=owner):
        return "orphan_released"
    return "orphan_recorded"


def _claimed_by(session: Session, *, intent: IntentState) -> tuple[Order | None,
                                                                   Payment | None]:
    """The order the intent names, and the attempt it matches to the cent, if any."""
    try:
        order_id = uuid.UUID(str(intent.metadata.get("order_id")))
    except ValueError:
        return None, None
    order = load(session, order_id=order_id)
    if order is None:
        return None, None
    attempt = str(intent.metadata.get("attempt", ""))
    if not attempt.isdigit():  # names the order, but no attempt of the shop's: a stranger
        return order, None
    payment = payments.find_attempt(session, order_id=order_id, attempt=int(attempt))
    matches = (payment is not None and payment.reference is None
               and payment.amount == intent.amount
               and payment.currency.lower() == intent.currency.lower())
    return order, payment if matches else None


def _stranger(intent: IntentState) -> str:
    taken = intent.amount_received - intent.amount_refunded
    return (f"A payment the shop did not create names this order: intent {intent.reference}, "
            f"{intent.status.value}, amount {intent.amount} {intent.currency.upper()}"
            f"{f', {taken} captured' if taken else ''}. Nothing was done to it.")


def _reloaded(session: Session, order_id: uuid.UUID) -> Order:
    order = load(session, order_id=order_id)
    if order is None:
        raise InvariantBroken(f"order {order_id} vanished under its lease")
    return order


def _reloaded_payment(session: Session, payment: Payment) -> Payment:
    fresh = session.get(Payment, payment.id)
    if fresh is None:
        raise InvariantBroken(f"payment {payment.id} vanished")
    return fresh


def note_dispute(session: Session, *, order: Order, payment: Payment, event_id: str,
                 dispute: dict[str, Any]) -> str:
    """A dispute event, applied once and by the dispute's state; the ledger keeps the
    amount an open dispute holds (the caller holds the lease and commits)."""
    outcome = disputes.note(session, order=order, event_id=event_id, dispute=dispute)
    if outcome in ("dispute_recorded", "dispute_closed"):
        amount = dispute.get("amount")
        held = int(amount) if outcome == "dispute_recorded" and isinstance(amount, int) else 0
        payments.record_dispute(session, payment=payment, amount=held)
    return outcome


def verify_ledger(session: Session, *, payment_id: int, gateway: PaymentGateway) -> bool:
    """Compare one attempt's ledger with the provider to the cent: agreeing marks it
    verified (and closes an open mismatch, saying so); disagreeing flags the order for
    a person with both sides' amounts. Moves no money. True if they agree."""
    payment = session.get(Payment, payment_id)
    if payment is None:
        return False
    session.commit()
    check = payments.check_ledger(payment=payment, gateway=gateway)
    if check is None:
        return False
    order = load(session, order_id=payment.order_id)
    if check.agrees:
        payments.mark_verified(session, payment=payment)
        attention.resolve(session, order_id=payment.order_id, kind=attention.Kind.LEDGER_MISMATCH,
                          order=order, why="the ledger and the provider agree again")
    else:
        attention.flag(session, order_id=payment.order_id, kind=attention.Kind.LEDGER_MISMATCH,
                       message=check.describe())
        if order is not None:
            order.record("payment.ledger_mismatch", internal={
                "attempt": payment.attempt, "ours": list(check.ours),
                "theirs": list(check.theirs)})
    session.commit()
    return check.agrees


def refund_lines(session: Session, *, refund_id: uuid.UUID, gateway: PaymentGateway,
                 owner: str) -> str:
    """Send one line refund to the provider, once, and record what it did.

    Under the order's lease: the request is marked sent (committed) before the call;
    the call's key is derived from the request, so an answer that is lost is resolved
    by sending again (``PaymentTransientError`` propagates: the task retries, and gives
    up into the attention list). Success records the money (its own ``Refund`` row,
    the payment's refunded total and status) and the restock in one commit.
    """
    request = refunds.get(session, refund_id=refund_id)
    if request is None:
        return "no_refund"
    if request.status == RefundStatus.SUCCEEDED:
        return "already_refunded"
    order_id = request.order_id
    with lease.hold(session, order_id=order_id, owner=owner):
        request = refunds.get(session, refund_id=refund_id)
        payment = payments.find_attempt(session, order_id=order_id,
                                        attempt=request.payment_attempt) if request else None
        if request is None or payment is None:
            raise InvariantBroken(f"refund {refund_id} has its order's payment attempt")
        if request.status == RefundStatus.SUCCEEDED:
            return "already_refunded"
        if refunds.too_old_to_resend(request):
            order = _locked(session, order_id)
            refunds.mark_needs_attention(
                session, request=request, order=order,
                error="its outcome has been unknown for a day, longer than the provider "
                      "remembers its key: check the provider's dashboard before refunding")
            lease.clear(order)
            session.commit()
            return "left_to_a_person"
        refunds.mark_sent(session, request=request)
        amount, key = request.amount, refunds.provider_key(request, payment)
        session.commit()
        try:
            reference, result = payments.refund(payment=payment, amount=amount, key=key,
                                                gateway=gateway)
        except PaymentProviderError as exc:
            session.expire_all()
            order = _locked(session, order_id)
            request = refunds.get(session, refund_id=refund_id)
            if request is None:
                raise InvariantBroken(f"refund {refund_id} vanished") from exc
            refunds.mark_needs_attention(session, request=request, order=order,
                                         error=f"the provider refused the refund: {exc}")
            lease.clear(order)
            session.commit()
            return "refused"
        session.expire_all()
        order = _locked(session, order_id)  # first, as a refund's request takes it
        request = refunds.get(session, refund_id=refund_id)
        if request is None:
            raise InvariantBroken(f"refund {refund_id} vanished")
        if request.status != RefundStatus.SUCCEEDED:
            payment = payments.record_refund(
                session, payment=_reloaded_payment(session, payment), amount=amount,
                reference=reference, reason=f"line_refund:{request.source}", result=result)
            refunds.mark_succeeded(session, request=request, order=order, reference=reference)
            order.record(f"payment.{payment.status}", detail={
                "amount_refunded": payment.amount_refunded,
                "amount_captured": payment.amount_captured})
        lease.clear(order)
        session.commit()
        return "refunded"


def _locked(session: Session, order_id: uuid.UUID) -> Order:
    """The order's row, locked first: the order in which a line refund's request takes
    its rows (order, lines, payment), so the two never deadlock."""
    order = load(session, order_id=order_id, lock=True)
    if order is None:
        raise InvariantBroken(f"order {order_id} vanished under its lease")
    return order
