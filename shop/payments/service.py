"""Payment attempts: authorize, capture and void, safe to run twice or after a crash.

Rules that keep money right under redelivery:
- the provider idempotency key is ``<order id>:<attempt>:<operation>``, never random;
- the intent id is stored (and committed) before the intent is confirmed, so a re-run
  asks the provider about that intent instead of creating another;
- no provider call happens inside a database transaction.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shop.payments.gateway import (
    IntentState,
    PaymentDeclined,
    PaymentGateway,
    PaymentProviderError,
    PaymentTransientError,
)
from shop.payments.models import Payment, PaymentStatus

log = logging.getLogger(__name__)

CANCELLABLE = ("requires_payment_method", "requires_confirmation", "requires_action",
               "requires_capture")


class Outcome(StrEnum):
    AUTHORIZED = "authorized"
    REQUIRES_ACTION = "requires_action"
    DECLINED = "declined"


@dataclass(frozen=True, slots=True)
class AuthResult:
    outcome: Outcome
    payment_id: int
    reference: str | None
    reason: str | None = None
    message: str | None = None


def attempt_key(order_id: uuid.UUID, attempt: int) -> str:
    """The idempotency key of one payment attempt; operations append a suffix."""
    return f"{order_id}:{attempt}"


def open_attempt(
    session: Session, *, order_id: uuid.UUID, attempt: int, amount: int, currency: str,
    provider: str,
) -> Payment:
    """The payment row of this attempt, created (and committed) if it is new."""
    query = select(Payment).where(Payment.order_id == order_id, Payment.attempt == attempt)
    payment = session.scalar(query)
    if payment is not None:
        session.commit()  # end the read: no transaction stays open across provider calls
        return payment
    session.add(Payment(order_id=order_id, attempt=attempt, provider=provider, amount=amount,
                        currency=currency, idempotency_key=attempt_key(order_id, attempt)))
    try:
        session.commit()
    except IntegrityError:  # a concurrent copy of the step created it first
        session.rollback()
    payment = session.scalar(query)
    assert payment is not None
    session.commit()
    return payment


def authorize(
    session: Session, *, payment: Payment, payment_method: str, gateway: PaymentGateway,
) -> AuthResult:
    """Authorize the attempt's amount; the result says what the order should do next."""
    reference = payment.reference or _create_intent(
        session, payment=payment, payment_method=payment_method, gateway=gateway)
    state = gateway.retrieve(reference)
    if state.status == "requires_confirmation":
        try:
            state = gateway.confirm(reference, idempotency_key=f"{payment.idempotency_key}:confirm")
        except PaymentDeclined as exc:
            return _declined(payment, reference, exc.reason, exc.message, gateway)
        except PaymentProviderError:
            state = gateway.retrieve(reference)  # e.g. a concurrent copy confirmed it first
    return _judge(payment, state, gateway)


def _create_intent(
    session: Session, *, payment: Payment, payment_method: str, gateway: PaymentGateway,
) -> str:
    state = gateway.create_intent(
        amount=payment.amount, currency=payment.currency, payment_method=payment_method,
        metadata={"order_id": str(payment.order_id), "attempt": str(payment.attempt)},
        idempotency_key=f"{payment.idempotency_key}:create",
    )
    stored = session.execute(
        update(Payment)
        .where(Payment.id == payment.id, Payment.reference.is_(None))
        .values(reference=state.reference, status=PaymentStatus.PENDING,
                client_secret=state.client_secret)
    )
    session.commit()
    if stored.rowcount == 0:  # type: ignore[attr-defined]
        session.refresh(payment)
        if payment.reference != state.reference:
            _cancel_quietly(gateway, state.reference, f"{payment.idempotency_key}:orphan")
    assert payment.reference is not None
    return payment.reference


def _judge(payment: Payment, state: IntentState, gateway: PaymentGateway) -> AuthResult:
    if state.status in ("requires_capture", "succeeded"):
        return AuthResult(Outcome.AUTHORIZED, payment.id, state.reference)
    if state.status == "requires_action":
        return AuthResult(Outcome.REQUIRES_ACTION, payment.id, state.reference)
    if state.status == "requires_payment_method":
        return _declined(payment, state.reference, state.decline_code or "card_declined",
                         state.decline_message or "The card was declined.", gateway)
    if state.status == "canceled":
        return AuthResult(Outcome.DECLINED, payment.id, state.reference, "payment_cancelled",
                          "The payment was cancelled at the provider.")
    raise PaymentTransientError(f"intent {state.reference} is {state.status}; asking again later")


def _declined(payment: Payment, reference: str, reason: str, message: str,
              gateway: PaymentGateway) -> AuthResult:
    # A declined intent holds no money; cancelling it keeps the dashboard honest.
    _cancel_quietly(gateway, reference, f"{payment.idempotency_key}:cancel")
    return AuthResult(Outcome.DECLINED, payment.id, reference, reason, message)


def _cancel_quietly(gateway: PaymentGateway, reference: str, key: str) -> None:
    try:
        gateway.cancel(reference, idempotency_key=key)
    except PaymentProviderError:
        log.info("intent %s was not cancellable", reference)


def record(session: Session, *, payment_id: int, status: PaymentStatus,
           decline_code: str | None = None, client_secret: str | None = None) -> None:
    """Note a payment's new status in the caller's transaction (no commit)."""
    values: dict[str, object] = {"status": status}
    if decline_code is not None:
        values["decline_code"] = decline_code
    if client_secret is not None:
        values["client_secret"] = client_secret
    session.execute(update(Payment).where(Payment.id == payment_id).values(**values))


def capture(*, payment: Payment, amount: int, gateway: PaymentGateway) -> IntentState:
    """Capture an authorized intent; asking first makes a second run harmless."""
    assert payment.reference is not None
    state = gateway.retrieve(payment.reference)
    if state.status == "requires_capture":
        try:
            state = gateway.capture(payment.reference, amount=amount,
                                    idempotency_key=f"{payment.idempotency_key}:capture")
        except PaymentProviderError:
            state = gateway.retrieve(payment.reference)
    return state


def void(session: Session, *, order_id: uuid.UUID, attempt: int,
         gateway: PaymentGateway) -> str | None:
    """Release whatever the attempt holds at the provider; returns the intent's status."""
    payment = session.scalar(
        select(Payment).where(Payment.order_id == order_id, Payment.attempt == attempt))
    if payment is None or payment.reference is None:
        return None
    state = gateway.retrieve(payment.reference)
    if state.status in CANCELLABLE:
        state = gateway.cancel(payment.reference,
                               idempotency_key=f"{payment.idempotency_key}:cancel")
    if state.status == "succeeded":
        log.error("payment %s of order %s was captured; it needs a refund",
                  payment.reference, order_id)
        return state.status
    if payment.status != PaymentStatus.FAILED:
        payment.status = PaymentStatus.VOIDED
    session.commit()
    return state.status
